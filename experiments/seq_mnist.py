"""Sequential MNIST: an LSTM reads each 28x28 image one row (28 pixels) per step.

python -m experiments.seq_mnist --workdir runs/seq_mnist --config.data_dir=~/tensorflow_datasets
python -m experiments.seq_mnist --workdir runs/seq_digits --config.dataset=seq_digits
"""

import ml_collections

from jdl.config import base_config


def get_config():
    c = base_config()
    c.dataset = "seq_mnist"  # seq_mnist (tfds) | seq_digits (embedded 8x8: 8 steps of 8)
    c.model = ml_collections.ConfigDict(
        {
            "name": "rnn",
            "cell": "lstm",  # rnn | lstm | gru
            "hidden_size": 128,
            "num_layers": 1,
            "dropout_rate": 0.0,
            "bidirectional": False,
            "pooling": "last",  # last | mean
        }
    )
    c.num_epochs = 5
    c.batch_size = 128
    c.optimizer = "adam"
    c.learning_rate = 2e-3
    c.schedule = "warmup_cosine"
    c.warmup_steps = 200
    c.grad_clip_norm = 1.0
    c.log_every = 100
    return c


if __name__ == "__main__":
    from experiments.cli import run

    run(get_config)
