"""The FID classifier's numbers in one process of a run; as a script, one of two processes.

python tests/fid_helpers.py PROCESS_ID PORT   # prints "accuracy fid"
"""

import sys

import numpy as np

from jdl import distributed
from jdl.data.embedded import load_embedded
from jdl.tasks.gan import quality_metric


def quality_numbers() -> tuple[float, float]:
    """(classifier eval accuracy, FID of fixed uniform noise) on the digits."""
    dataset = load_embedded("digits", batch_size=64, eval_batch_size=128, seed=0)
    metric = quality_metric(dataset, classifier_steps=8, seed=0, fid_samples=0)
    noise = np.random.default_rng(0).random((len(metric.real_features), 8, 8, 1), np.float32)
    return metric.classifier_accuracy, metric(lambda num: noise[:num])["fid"]


if __name__ == "__main__":
    process_id, port = int(sys.argv[1]), int(sys.argv[2])
    distributed.initialize(True, f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    print(*quality_numbers())
