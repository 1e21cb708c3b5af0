"""DCGAN (the documents' GAN) on MNIST-style images, with sample grids and FID every epoch.

    python -m experiments.dcgan --workdir runs/dcgan_mnist --config.data_dir=~/tensorflow_datasets
    python -m experiments.dcgan --workdir runs/dcgan_digits --config.dataset=digits \\
        --config.num_epochs=60 --config.batch_size=64
    python -m experiments.dcgan --workdir runs/dcgan_onednn --config.model.conv_impl=onednn \\
        --config.data_dir=~/tensorflow_datasets   # oneDNN's convolutions (jdl/onednn.py)

Writes, besides metrics.jsonl and curves.png: samples/epoch_NNN.png (a fixed-noise grid per
epoch), samples/progress.gif (all epochs so far) and interpolation.png (README, "GANs").
"""

import ml_collections

from jdl.config import base_config


def get_config():
    c = base_config()
    c.dataset = "mnist"  # mnist | fashion_mnist | cifar10 | digits
    c.model = ml_collections.ConfigDict(
        {
            "name": "dcgan",
            # Both networks' layers: auto (patch matmuls on CPU, XLA's convolutions elsewhere),
            # onednn (oneDNN's convolutions on CPU, the fastest there; needs oneDNN installed:
            # jdl/onednn.py) or xla.
            "conv_impl": "auto",
            "generator": {
                "widths": (256, 128, 64),  # first map (image/4), then two upsampling layers
                "hidden_size": 0,  # > 0: the documents' Dense(1024) before the first map
            },
            "discriminator": {
                "widths": (64, 128, 256),  # 5x5 stride-2 convolutions
                "batch_norm": False,  # DCGAN's inner-layer batch norm (see jdl/models/gan.py)
            },
        }
    )
    c.task = ml_collections.ConfigDict(
        {
            "name": "gan",
            "loss": "non_saturating",  # non_saturating | hinge
            "d_steps": 1,  # discriminator updates per generator update
            "latent_dim": 100,  # size of the generator's input noise z
            "beta1": 0.5,  # Adam's beta1 for both networks (DCGAN)
            "classifier_steps": 1000,  # FID feature classifier's Adam steps; 0: no FID/IS
            "fid_samples": 0,  # generated images per FID; 0: as many as the eval split
            "grid_rows": 8,  # sample grids are grid_rows x grid_rows
        }
    )
    c.learning_rate = 2e-4  # both networks' Adam (optimizer adam, or adamw with weight_decay)
    c.batch_size = 128
    # 8 steps per compiled call (a lax.scan): level with one step per call on 2 CPU cores
    # since the convolutions became matmuls (135 vs 133 examples/s), fewer host round trips.
    c.steps_per_call = 8
    c.eval_batch_size = 500
    c.num_epochs = 5
    c.best_metric = "eval/fid"
    c.log_every = 100
    return c


if __name__ == "__main__":
    from experiments.cli import run

    run(get_config)
