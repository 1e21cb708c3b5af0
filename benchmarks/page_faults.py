"""Page faults and time per call of the documents' CNN step, with and without jdl's allocator
setting (`jdl.parallel.allocator.keep_freed_memory`), each in a fresh process.

    python -m benchmarks.page_faults                # from the repo root

A compiled step needs tens of MB of scratch per call; with glibc's defaults it is unmapped on
`free` and page-faulted in again on every call. Each row is the median over calls 5-12 of a
jitted step (batch 128, 28x28x1, Adam), measured with `getrusage` in its own process, so the
setting applies before JAX's threads start. Linux (glibc) only.
"""

import os
import statistics
import subprocess
import sys

CALLS, WARMUP = 12, 4

# Run in a fresh process: argv[1] is "keep" (call keep_freed_memory first) or "default".
CHILD = f"""
import os, resource, sys, time
if sys.argv[1] == "keep":
    from jdl.parallel.allocator import keep_freed_memory
    assert keep_freed_memory(), "glibc refused the setting"
import jax, numpy as np, optax
from jdl.models import build_model
from jdl.parallel import Strategy
from jdl.state import create_train_state
from jdl.steps import train_step
step = Strategy("jit").compile_train(train_step)
model = build_model({{"name": "cnn"}}, 10)
state = create_train_state(model, optax.adam(1e-3), (28, 28, 1), jax.random.key(0))
batch = {{"image": np.ones((128, 28, 28, 1), np.float32), "label": np.zeros(128, np.int32)}}
for _ in range({CALLS}):
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    state, metrics = step(state, batch, jax.random.key(1))
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults, seconds)
"""


def measure(setting: str) -> tuple[int, float]:
    """(median page faults, median ms) per call after warm-up, in a fresh process."""
    # JDL_KEEP_FREED_MEMORY=0 stops `import jdl` from applying the setting on its own.
    env = {**os.environ, "JDL_KEEP_FREED_MEMORY": "1" if setting == "keep" else "0"}
    env["XLA_FLAGS"] = ""  # one CPU device, as a user's process has
    result = subprocess.run(
        [sys.executable, "-c", CHILD, setting], env=env, capture_output=True, text=True
    )
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    rows = [line.split() for line in result.stdout.splitlines()[WARMUP:]]
    faults = statistics.median(int(f) for f, _ in rows)
    ms = statistics.median(float(s) for _, s in rows) * 1e3
    return int(faults), ms


def main() -> None:
    if not sys.platform.startswith("linux"):
        sys.exit("glibc's allocator only: run this on Linux.")
    print("| allocator | page faults per call | ms per call |\n|---|---:|---:|")
    for setting, label in (("default", "glibc defaults"), ("keep", "keep_freed_memory()")):
        faults, ms = measure(setting)
        print(f"| {label} | {faults:,} | {ms:.1f} |")


if __name__ == "__main__":
    main()
