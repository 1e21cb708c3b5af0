"""The documents' MLP, 784-256-10, on MNIST-style images.

    python -m experiments.mnist_mlp --workdir runs/mnist_mlp --config.data_dir=~/tensorflow_datasets

Other nets of the documents are one override away, e.g. 784-128-drop0.2-128-drop0.2-10:
    --config.model.hidden_sizes='(128, 128)' --config.model.dropout_rate=0.2
"""

import ml_collections

from jdl.config import base_config


def get_config():
    c = base_config()
    c.dataset = "mnist"  # mnist | fashion_mnist | cifar10 | digits
    c.model = ml_collections.ConfigDict(
        {
            "name": "mlp",
            "hidden_sizes": (256,),  # one hidden layer of 256 units
            "activation": "relu",  # relu | tanh | sigmoid | leaky_relu | gelu | prelu
            "dropout_rate": 0.0,
            "batch_norm": False,
        }
    )
    c.num_epochs = 5
    c.batch_size = 64
    c.optimizer = "adamw"
    c.learning_rate = 2e-3
    c.schedule = "warmup_cosine"
    c.warmup_steps = 300
    c.weight_decay = 1e-4
    c.label_smoothing = 0.1
    c.log_every = 100
    return c


if __name__ == "__main__":
    from experiments.cli import run

    run(get_config)
