"""The documents' CNN (Conv32-pool-Conv64-pool-Dense) on MNIST-style images.

    python -m experiments.mnist_cnn --workdir runs/mnist_cnn --config.data_dir=~/tensorflow_datasets

Recipe: the architecture is unchanged; what beats a plain Adam 1e-3 / batch 128
loop is the schedule (warmup then cosine decay to zero over the 3 epochs),
smaller batches (more updates per epoch), decoupled weight decay and label smoothing.
On real MNIST: 99.18 % in 3 epochs; `--config.num_steps=1200 --config.learning_rate=0.01`
(1.28 epochs) reached 99.0 % for all five seeds tried, the shortest schedule found
(benchmarks/README.md, "real MNIST").
"""

import ml_collections

from jdl.config import base_config


def get_config():
    c = base_config()
    c.dataset = "mnist"  # mnist | fashion_mnist | cifar10 | digits
    c.model = ml_collections.ConfigDict(
        {
            "name": "cnn",
            "widths": (32, 64),  # one 3x3 valid conv + 2x2 max pool per width
            "activation": "relu",  # relu | tanh | sigmoid | leaky_relu | gelu | prelu
            "batch_norm": False,
            "dropout_rate": 0.0,  # before the output layer
            "dense_size": ml_collections.FieldReference(None, field_type=int),  # extra layer
        }
    )
    c.num_epochs = 3
    c.batch_size = 64
    c.eval_batch_size = 128  # stays in a CPU cache: the 10k test images in 0.8 s, 1.2 s in 512s
    c.optimizer = "adamw"
    c.learning_rate = 3e-3
    c.schedule = "warmup_cosine"
    c.warmup_steps = 300
    c.weight_decay = 1e-4
    c.label_smoothing = 0.1
    c.steps_per_call = 8  # 8 steps per compiled call (a lax.scan): less per-call overhead
    c.log_every = 100
    # Data parallel over two devices: on a 2-core CPU, one per core (15 % faster than one
    # device splitting each operation); on GPUs and TPUs, over the accelerators.
    c.parallel = "sharded"
    c.cpu_devices = 2
    return c


if __name__ == "__main__":
    from experiments.cli import run

    run(get_config)
