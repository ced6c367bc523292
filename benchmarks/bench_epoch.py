"""Seconds per training epoch (train + validation) and peak RSS: plantlib vs the tutorial reference.

Each measurement runs in its own process so peak RSS and allocator state belong to that recipe alone.
Prints a Markdown table and writes artifacts/bench/epoch.json.

    python -m benchmarks.bench_epoch [--epochs 3] [--batch-sizes 32 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

from plantlib.io import write_json, write_text
from plantlib.paths import artifacts_dir


def measure(which: str, batch_size: int, epochs: int) -> dict:
    """Run in this process: `epochs` epochs of one recipe on the built-in split; epoch seconds and peak RSS."""
    from plantlib.config import RunConfig
    from plantlib.data import prepare_data

    config = RunConfig(
        batch_size=batch_size,
        epochs=epochs,
        early_stopping_patience=None,
        output_dir=str(artifacts_dir() / "bench" / "runs"),
    )
    data = prepare_data(config, show_progress=False)
    if which == "reference":
        from benchmarks.reference import train_reference

        result = train_reference(data, epochs=epochs, batch_size=batch_size)
        seconds, accuracy = result.epoch_seconds, result.test_accuracy
    else:
        from plantlib.train import Trainer

        trained = Trainer(config, data=data, show_progress=False).fit()
        seconds, accuracy = [row["seconds"] for row in trained.history], trained.test_metrics["accuracy"]
    return {
        "recipe": which,
        "batch_size": batch_size,
        "epoch_seconds": seconds,
        "test_accuracy": accuracy,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def steady(seconds: list[float]) -> float:
    """Median epoch time, leaving out the first epoch (warm-up) when there are more."""
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 4])
    parser.add_argument("--one", nargs=2, metavar=("RECIPE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.epochs)))
        return

    rows = []
    for batch_size in args.batch_sizes:
        for recipe in ("reference", "plantlib"):  # alternate inside one invocation so the ratio holds on a noisy box
            began = time.perf_counter()
            out = (
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.bench_epoch",
                        "--epochs",
                        str(args.epochs),
                        "--one",
                        recipe,
                        str(batch_size),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            row = json.loads(out)
            row["wall_seconds"] = time.perf_counter() - began
            row["steady_epoch_s"] = steady(row["epoch_seconds"])
            rows.append(row)
            print(
                f"{recipe:9s} batch {batch_size:2d}: {row['steady_epoch_s']:.1f} s/epoch, "
                f"peak RSS {row['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    lines = [
        "| batch | reference s/epoch | plantlib s/epoch | speed-up | reference peak RSS | plantlib peak RSS |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for batch_size in args.batch_sizes:
        ref, ours = (
            next(r for r in rows if r["recipe"] == k and r["batch_size"] == batch_size)
            for k in ("reference", "plantlib")
        )
        lines.append(
            f"| {batch_size} | {ref['steady_epoch_s']:.1f} | {ours['steady_epoch_s']:.1f} | "
            f"{ref['steady_epoch_s'] / ours['steady_epoch_s']:.2f}× | {ref['peak_rss_mb']:.0f} MB | "
            f"{ours['peak_rss_mb']:.0f} MB |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    target = artifacts_dir() / "bench"
    write_json(target / "epoch.json", {"machine": platform.processor() or platform.machine(), "rows": rows})
    write_text(target / "epoch.md", table + "\n")


if __name__ == "__main__":
    main()
