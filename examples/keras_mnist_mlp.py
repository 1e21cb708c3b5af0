"""The documents' first Keras program, line by line in jdl: an MLP 784-256-10 on MNIST.

    python examples/keras_mnist_mlp.py --data_dir ~/tensorflow_datasets [--epochs 1]

MNIST is read through tfds as NumPy arrays (prepared in `data_dir`, downloaded there if
missing), scaled to [0, 1], and trained with Adam and batch 32 for one epoch: about 97 %
test accuracy.
"""

import argparse

import flax.linen as nn
import numpy as np

import jdl


class MLP(nn.Module):
    """784 -> 256 (ReLU) -> 10. The last layer returns logits: the softmax is in the loss."""

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(256)(x))
        return nn.Dense(10)(x)


def load_mnist(data_dir: str | None, download: bool = True) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test): images as float32 in [0, 1], integer labels."""
    import tensorflow_datasets as tfds

    from jdl.data.tfds_data import prepared_builder

    builder = prepared_builder("mnist", data_dir, download)
    arrays = []
    for split in ("train", "test"):
        batches = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=10_000)))
        images = np.concatenate([b["image"] for b in batches]).astype(np.float32) / 255.0
        arrays += [images, np.concatenate([b["label"] for b in batches])]
    return tuple(arrays)


def main(argv: list[str] | None = None) -> float:
    """Trains and evaluates; returns the test accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None, help="tfds data_dir holding mnist")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--no-download", dest="download", action="store_false")
    args = parser.parse_args(argv)
    x_train, y_train, x_test, y_test = load_mnist(args.data_dir, args.download)

    model = jdl.Model(MLP())
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32)
    loss, accuracy = model.evaluate(x_test, y_test)
    print(f"test loss {loss:.4f}, test accuracy {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    jdl.keep_freed_memory()  # the CPU allocator setting, before JAX starts its threads
    main()
