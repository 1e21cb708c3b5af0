"""A notebook's training speed with and without `jdl.keep_freed_memory()`, each in a fresh process.

    python -m benchmarks.allocator_speed                 # the documents' CNN at batch 128
    python -m benchmarks.allocator_speed --steps 100 --model mlp

Each process does what a notebook does: `import jdl`, then (or not) `jdl.keep_freed_memory()`,
then trains the model with a compiled (`jit`) step on random MNIST-shaped batches. Printed:
examples/s (median of the repeats after a warm-up) and minor page faults per step.
A benchmark script, not a test: it asserts nothing.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODES = {"default glibc": False, "jdl.keep_freed_memory()": True}


def child(model_name: str, keep: bool, steps: int, repeats: int) -> dict:
    """Times `repeats` runs of `steps` steps in this process; `keep` applies the setting."""
    import jdl

    applied = jdl.keep_freed_memory() if keep else False
    import jax

    from benchmarks.train_speed import BATCH, LEARNING_RATE, NUM_CLASSES, make_data
    from jdl.models import build_model
    from jdl.optimizers import make_optimizer
    from jdl.parallel import Strategy
    from jdl.state import create_train_state
    from jdl.steps import train_step

    model = build_model({"name": model_name}, NUM_CLASSES)
    tx = make_optimizer({"optimizer": "adam", "learning_rate": LEARNING_RATE}, steps)
    strategy = Strategy("jit")
    data = make_data(BATCH)
    state = strategy.put_replicated(create_train_state(model, tx, (28, 28, 1), jax.random.key(0)))
    rng = strategy.put_replicated(jax.random.key(1))
    step, batch = strategy.compile_train(train_step), strategy.put_batch(data)

    def run(n: int):
        nonlocal state
        for _ in range(n):
            state, metrics = step(state, batch, rng)
        jax.block_until_ready(metrics)

    run(steps)  # compile and warm up
    seconds, faults = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        run(steps)
        seconds.append(time.perf_counter() - start)
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps)
    return {
        "applied": applied,
        "examples_per_s": steps * BATCH / statistics.median(seconds),
        "faults_per_step": statistics.median(faults),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn", choices=("cnn", "mlp"))
    parser.add_argument("--steps", type=int, default=50, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = child(args.model, args.child == "on", args.steps, args.repeats)
        print(json.dumps(result))
        return
    print(f"{args.model} at batch 128, load average {os.getloadavg()[0]:.1f} at start")
    print("| allocator | applied | examples/s | page faults / step |\n|---|---|---:|---:|")
    for label, keep in MODES.items():
        command = [
            sys.executable,
            "-m",
            "benchmarks.allocator_speed",
            "--child",
            "on" if keep else "off",
        ]
        command += [
            "--model",
            args.model,
            "--steps",
            str(args.steps),
            "--repeats",
            str(args.repeats),
        ]
        env = {k: v for k, v in os.environ.items() if k != "JDL_KEEP_FREED_MEMORY"}
        out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
        r = json.loads(out.strip().splitlines()[-1])
        speed, faults = f"{r['examples_per_s']:,.0f}", f"{r['faults_per_step']:,.0f}"
        print(f"| {label} | {r['applied']} | {speed} | {faults} |")
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
