"""The documents' binary classifier (features -> 10 ReLU -> 1 sigmoid) on breast-cancer data.

    python -m experiments.binary_mlp --workdir runs/binary_mlp

Embedded data (scikit-learn's 569 Wisconsin breast-cancer cases, 30 features), no download.
"""

import ml_collections

from jdl.config import base_config


def get_config():
    c = base_config()
    c.dataset = "breast_cancer"
    c.model = ml_collections.ConfigDict(
        {"name": "mlp", "hidden_sizes": (10,), "activation": "relu"}
    )  # two classes -> one logit with binary cross-entropy
    c.num_epochs = 60
    c.batch_size = 32
    c.eval_batch_size = 128
    c.optimizer = "adam"
    c.learning_rate = 3e-3
    c.schedule = "cosine"
    c.log_every = 50
    c.keep_checkpoints = 2
    return c


if __name__ == "__main__":
    from experiments.cli import run

    run(get_config)
