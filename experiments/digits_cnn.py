"""Quickstart: the documents' CNN on scikit-learn's embedded 8x8 digits (no download, ~1 min).

python -m experiments.digits_cnn --workdir runs/digits_cnn
"""

from experiments import mnist_cnn


def get_config():
    c = mnist_cnn.get_config()
    c.dataset = "digits"  # 1,437 train / 360 test real 8x8 images
    c.num_epochs = 40
    c.batch_size = 32
    c.eval_batch_size = 128
    c.warmup_steps = 100
    c.steps_per_call = 1  # 44 steps an epoch: one compiled step is enough
    c.parallel, c.cpu_devices = "jit", 0  # 8x8 images: too little work per step to split
    c.log_every = 45
    return c


if __name__ == "__main__":
    from experiments.cli import run

    run(get_config)
