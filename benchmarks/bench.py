"""plantlib vs the PyTorch tutorial recipe: training epochs, time to accuracy, inference, memory, scaling, CV.

Every figure comes from its own process (`benchmarks.measure`), the two recipes alternating inside one
invocation so their ratio holds on a noisy machine. The reference's full 25-epoch run (about 18 minutes on
2 CPU cores) is kept in artifacts/bench/reference-full-<device>.json and reused while the machine, the software and
the split are the same; `--rerun-reference` measures it again. Writes artifacts/bench/bench.json and
bench.md (the tables the README quotes).

    python -m benchmarks.bench [--device cpu|cuda] [--skip epochs inference reference scaling ddp tracking cv]
                               [--rerun-reference]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.measure import BENCH_DIR, steady
from plantlib.config import RunConfig
from plantlib.data.prepare import split_file_for
from plantlib.io import write_json, write_text
from plantlib.paths import builtin_data_dir

TARGETS = {
    "epoch_speedup_b32": 3.0,
    "time_to_accuracy_fraction": 1 / 5,
    "single_image_ms": 20.0,
    "batched_images_per_s": 60.0,
    "train_peak_rss_mb": 2048.0,
    "cv_vs_single_runs": 1.15,
}


def run(name: str, **arguments: Any) -> dict[str, Any]:
    """One measurement in a fresh process; its last stdout line is the JSON result."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "benchmarks.measure", name, json.dumps(arguments)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PLANTLIB_PROGRESS": "off"})
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"benchmark step {name} {arguments} failed (exit {done.returncode}); output above")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = round(time.perf_counter() - started, 1)
    print(f"  {name} {arguments}: {result['process_seconds']:.0f} s", flush=True)
    return result


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def reference_fingerprint(device: str) -> str:
    """What the reference's full run depends on: machine, software, its code, its network's layers, the split.

    The network enters as its module listing (layer types and shapes), so edits elsewhere in plantlib keep a
    stored run valid while a change to the layers the reference trains invalidates it.
    """
    from benchmarks.reference import reference_model

    root = Path(__file__).resolve().parents[1]
    parts = [json.dumps(machine(), sort_keys=True), device, (root / "benchmarks" / "reference.py").read_text()]
    parts.append(repr(reference_model(2)))
    split_file = split_file_for(RunConfig(), builtin_data_dir())  # the default recipe's split of the data
    parts += [split_file.read_text()] if split_file.is_file() else []
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def reference_full(device: str, rerun: bool) -> dict[str, Any]:
    """The tutorial's 25-epoch run: measured once per fingerprint, then reused."""
    cache = BENCH_DIR / f"reference-full-{device}.json"
    fingerprint = reference_fingerprint(device)
    if cache.is_file() and not rerun:
        stored = json.loads(cache.read_text())
        if stored.get("fingerprint") == fingerprint:
            print(f"  reference_full: reused {cache.name} (measured {stored['measured_at']})", flush=True)
            return stored
    print("  reference_full: running the tutorial's 25 epochs (stored for later runs)", flush=True)
    result = run("reference_full", device=device)
    result.update(fingerprint=fingerprint, measured_at=time.strftime("%Y-%m-%d %H:%M"))
    write_json(cache, result)
    return result


def ddp_rows(epochs: int = 2, device: str = "cpu") -> list[dict[str, Any]]:
    """`plantlib train` (default recipe) as 1 process using every core vs 2 torchrun processes sharing them."""
    cores = os.cpu_count() or 2
    rows = []
    for processes in (1, 2):
        runs = BENCH_DIR / "ddp" / f"{processes}proc"
        threads = max(1, cores // processes)
        command = [sys.executable, "-m", "plantlib", "train", "--epochs", str(epochs), "--device", device]
        command += ["--early-stopping-patience", "none", "--output-dir", str(runs)]
        if processes > 1:
            command += ["--nproc", str(processes)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PLANTLIB_PROGRESS": "off"}
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            raise SystemExit(f"distributed benchmark with {processes} processes failed; output above")
        run = sorted(p for p in runs.iterdir() if (p / "history.json").is_file())[-1]
        history = json.loads((run / "history.json").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
        rows.append(
            {
                "processes": processes,
                "threads_per_process": threads,
                "epoch_seconds": [row["seconds"] for row in history],
                "steady_epoch_s": steady([row["seconds"] for row in history]),
                "test_accuracy": metrics["accuracy"],
                "wall_seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(f"  ddp {processes} process(es) x {threads} threads: {rows[-1]['wall_seconds']:.0f} s", flush=True)
    return rows


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def tables(results: dict[str, Any]) -> str:
    """The Markdown the README quotes."""
    lines = [
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, device "
        f"{results['device']}, torch {results['machine']['torch']}.",
        "",
    ]
    measured = [b for b in results["batch_sizes"] if str(b) in results["epochs"]]
    if measured:
        lines += [
            "| training, full fine-tuning, lite0 224 px | reference | plantlib | plantlib / reference |",
            "| --- | --- | --- | --- |",
        ]
    for batch in measured:
        ref, ours = results["epochs"][str(batch)]["reference"], results["epochs"][str(batch)]["plantlib"]
        lines.append(
            f"| s/epoch, batch {batch} (train + val) | {ref['steady_epoch_s']:.1f} | {ours['steady_epoch_s']:.1f} "
            f"| {ratio(ref['steady_epoch_s'], ours['steady_epoch_s']):.2f}× faster |"
        )
        lines.append(
            f"| train images/s, batch {batch} | {ref['train_images_per_s']:.1f} | {ours['train_images_per_s']:.1f} "
            f"| {ratio(ours['train_images_per_s'], ref['train_images_per_s']):.2f}× |"
        )
        lines.append(
            f"| eval images/s, batch {batch} | {ref['eval_images_per_s']:.1f} | {ours['eval_images_per_s']:.1f} "
            f"| {ratio(ours['eval_images_per_s'], ref['eval_images_per_s']):.2f}× |"
        )
        lines.append(
            f"| peak RSS, batch {batch} | {ref['peak_rss_mb']:.0f} MB | {ours['peak_rss_mb']:.0f} MB "
            f"| {ratio(ours['peak_rss_mb'], ref['peak_rss_mb']):.2f}× |"
        )
    full, default = results.get("reference_full"), results["default_run"]
    if full:
        lines += [
            "",
            "| time to accuracy | reference (tutorial, 25 epochs, batch 4) | plantlib default recipe | ratio |",
            "| --- | --- | --- | --- |",
            f"| wall time | {full['seconds']:.0f} s | {default['seconds']:.0f} s "
            f"| {ratio(default['seconds'], full['seconds']):.3f} of the reference's |",
            f"| test accuracy | {full['test_accuracy']:.3f} | {default['test_accuracy']:.3f} | |",
            f"| peak RSS | {full['peak_rss_mb']:.0f} MB | {default['peak_rss_mb']:.0f} MB | |",
        ]
    if results.get("inference"):
        ref_inf, ours_inf = results["inference"]["reference"], results["inference"]["plantlib"]
        lines += [
            "",
            f"| inference (decode + preprocess + forward) | reference | plantlib ({ours_inf.get('engine', 'torch')}) "
            "| ratio |",
            "| --- | --- | --- | --- |",
            f"| single image, median ms | {ref_inf['single_image_ms']:.1f} | {ours_inf['single_image_ms']:.1f} "
            f"| {ratio(ref_inf['single_image_ms'], ours_inf['single_image_ms']):.2f}× faster |",
            f"| batched (32), images/s | {ref_inf['batched_images_per_s']:.1f} | "
            f"{ours_inf['batched_images_per_s']:.1f} "
            f"| {ratio(ours_inf['batched_images_per_s'], ref_inf['batched_images_per_s']):.2f}× |",
        ]
        tta = results["inference"].get("plantlib_tta")
        if tta:
            lines += [
                f"| plantlib with test-time augmentation (3 views): single image, median ms | | "
                f"{tta['single_image_ms']:.1f} | {ratio(tta['single_image_ms'], ours_inf['single_image_ms']):.2f}× "
                "plain plantlib's |",
                f"| plantlib with test-time augmentation: batched (32), images/s | | "
                f"{tta['batched_images_per_s']:.1f} | "
                f"{ratio(tta['batched_images_per_s'], ours_inf['batched_images_per_s']):.2f}× plain plantlib's |",
            ]
    if results.get("scaling"):
        lines += [
            "",
            "| scaling (default recipe) | train images | epoch s (first: decodes every image) | train images/s "
            "| decoded cache in memory / on disk | peak RSS |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in results["scaling"]:
            cache = row["cache"]
            lines.append(
                f"| {row['factor']}× | {row['train_images']} | {row['first_epoch_s']:.1f} | "
                f"{row['train_images_per_s']:.1f} | "
                f"{cache['memory_mb']:.0f} MB / {cache['disk_mb']:.0f} MB (budget {cache['budget_mb']:.0f} MB) | "
                f"{row['peak_rss_mb']:.0f} MB |"
            )
    if results.get("ddp"):
        lines += [
            "",
            "| plantlib train, default recipe | steady epoch s | test accuracy |",
            "| --- | --- | --- |",
        ]
        for row in results["ddp"]:
            lines.append(
                f"| {row['processes']} process(es) × {row['threads_per_process']} threads "
                f"| {row['steady_epoch_s']:.1f} | {row['test_accuracy']:.3f} |"
            )
    if results.get("tracking"):
        lines += ["", *tracking_rows(results["tracking"])]
    if results.get("cv"):
        lines += ["", *cv_rows(results["cv"], results["default_run"])]
    return "\n".join(lines)


def cv_rows(cv: dict[str, Any], single: dict[str, Any]) -> list[str]:
    """K-fold CV in one process against K fresh `plantlib train` processes of the default recipe."""
    folds = cv["folds"]
    return [
        f"| default recipe | {folds} single runs ({folds} × one process) | {folds}-fold CV (one process) | ratio |",
        "| --- | --- | --- | --- |",
        f"| wall time, process start to exit | {folds * single['process_seconds']:.0f} s | "
        f"{cv['process_seconds']:.0f} s | {ratio(cv['process_seconds'], folds * single['process_seconds']):.2f} "
        f"(target ≤ {TARGETS['cv_vs_single_runs']}) |",
        f"| CPU time of the training | {folds * single['cpu_seconds']:.0f} s | {cv['cpu_seconds']:.0f} s | "
        f"{ratio(cv['cpu_seconds'], folds * single['cpu_seconds']):.2f} |",
        f"| accuracy | {single['test_accuracy']:.3f} (test, n = 60, one run) | {cv['accuracy']:.3f} "
        f"(pooled out-of-fold, n = {cv['n']}) | |",
    ]


def tracking_rows(rows: list[dict[str, Any]]) -> list[str]:
    """Tracking's cost: hook time on the training thread (the direct measure) and whole epochs, off vs on."""
    off, on = (next(r for r in rows if r["tracked"] is flag) for flag in (False, True))
    hooks = on["hook_seconds"]
    per_epoch = max(hooks.get("on_epoch_end", [0.0]))
    return [
        "| MLflow tracking, default recipe | untracked | tracked | overhead |",
        "| --- | --- | --- | --- |",
        f"| training thread in tracking hooks: start-up | | {hooks['on_fit_start'][0] * 1000:.1f} ms | "
        f"{hooks['on_fit_start'][0]:.3f} s (target ≤ 1 s) |",
        f"| training thread in tracking hooks: per epoch (max) | | {per_epoch * 1000:.2f} ms | "
        f"{100 * per_epoch / on['steady_epoch_s']:.3f} % of an epoch (target ≤ 2 %) |",
        f"| steady epoch s (one run each; machine noise ±10 %) | {off['steady_epoch_s']:.2f} | "
        f"{on['steady_epoch_s']:.2f} | {100 * (on['steady_epoch_s'] / off['steady_epoch_s'] - 1):+.1f} % |",
        f"| first epoch s (tracked: MLflow imported and the store made on a thread meanwhile) | "
        f"{off['epoch_seconds'][0]:.2f} | {on['epoch_seconds'][0]:.2f} | "
        f"{100 * (on['epoch_seconds'][0] / off['epoch_seconds'][0] - 1):+.1f} % |",
        f"| end of run: figures and upload (on_fit_end) | | {hooks['on_fit_end'][0]:.2f} s | |",
    ]


def target_checks(results: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(target, met, figures) for the targets of the speed work."""
    b32 = results["epochs"].get("32")
    checks = []
    if b32:
        speedup = ratio(b32["reference"]["steady_epoch_s"], b32["plantlib"]["steady_epoch_s"])
        checks.append(("epoch at batch 32 ≥ 3× faster", speedup >= TARGETS["epoch_speedup_b32"], f"{speedup:.2f}×"))
    full, default = results.get("reference_full"), results["default_run"]
    if full:
        fraction = ratio(default["seconds"], full["seconds"])
        met = fraction <= TARGETS["time_to_accuracy_fraction"] and default["test_accuracy"] >= full["test_accuracy"]
        checks.append(
            (
                "reference's accuracy in ≤ 1/5 of its time",
                met,
                f"{default['test_accuracy']:.3f} vs {full['test_accuracy']:.3f} in {fraction:.3f} of the time",
            )
        )
    if results.get("inference"):
        ours = results["inference"]["plantlib"]
        checks.append(
            (
                "single image ≤ 20 ms",
                ours["single_image_ms"] <= TARGETS["single_image_ms"],
                f"{ours['single_image_ms']:.1f} ms",
            )
        )
        checks.append(
            (
                "batched ≥ 60 images/s",
                ours["batched_images_per_s"] >= TARGETS["batched_images_per_s"],
                f"{ours['batched_images_per_s']:.1f} images/s",
            )
        )
    if results.get("cv"):
        cv, single = results["cv"], results["default_run"]
        share = ratio(cv["process_seconds"], cv["folds"] * single["process_seconds"])
        checks.append(
            (
                f"{cv['folds']}-fold CV ≤ {TARGETS['cv_vs_single_runs']} × {cv['folds']} single default runs",
                share <= TARGETS["cv_vs_single_runs"],
                f"{share:.2f}",
            )
        )
    checks.append(
        (
            "peak RSS training (default recipe, batch 32) ≤ 2 GB",
            default["peak_rss_mb"] <= TARGETS["train_peak_rss_mb"],
            f"{default['peak_rss_mb']:.0f} MB",
        )
    )
    return checks


SECTIONS = ("epochs", "inference", "reference", "scaling", "ddp", "tracking", "cv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per epoch-time measurement")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 4])
    parser.add_argument("--scaling", type=int, nargs="+", default=[1, 4, 16], help="replication factors")
    parser.add_argument(
        "--scaling-cache-mb", type=float, default=256.0, help="decoded-image memory budget in the scaling runs"
    )
    parser.add_argument(
        "--skip", nargs="+", default=[], choices=SECTIONS, help="sections to leave out (the default run always runs)"
    )
    parser.add_argument("--rerun-reference", action="store_true", help="measure the 25-epoch reference again")
    args = parser.parse_args()

    began = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(), "device": args.device, "batch_sizes": args.batch_sizes}
    print(f"benchmark on {results['machine']['cpu']} ({args.device})", flush=True)
    results["epochs"] = {}
    if "epochs" not in args.skip:
        for batch in args.batch_sizes:
            results["epochs"][str(batch)] = {
                recipe: run("epochs", recipe=recipe, batch_size=batch, epochs=args.epochs, device=args.device)
                for recipe in ("reference", "plantlib")
            }
    partial = BENCH_DIR / f"bench-partial-{args.device}.json"  # kept if a later section fails
    write_json(partial, results)
    results["default_run"] = run("default_run", device=args.device)
    write_json(partial, results)
    if "inference" not in args.skip:
        results["inference"] = {
            "reference": run("inference", recipe="reference", device=args.device),
            "plantlib": run(
                "inference", recipe="plantlib", checkpoint=results["default_run"]["checkpoint"], device=args.device
            ),
            "plantlib_tta": run(
                "inference",
                recipe="plantlib",
                checkpoint=results["default_run"]["checkpoint"],
                device=args.device,
                tta=True,
            ),
        }
    write_json(partial, results)
    if "reference" not in args.skip:
        results["reference_full"] = reference_full(args.device, args.rerun_reference)
    if "scaling" not in args.skip:
        results["scaling"] = [
            run("scaling", factor=factor, epochs=1, cache_memory_mb=args.scaling_cache_mb) for factor in args.scaling
        ]
    write_json(partial, results)
    if "ddp" not in args.skip:
        results["ddp"] = ddp_rows()
    if "tracking" not in args.skip:
        results["tracking"] = [run("tracking", tracked=tracked) for tracked in (False, True)]
    if "cv" not in args.skip:
        results["cv"] = run("cross_validation", folds=5, device=args.device)
    results["bench_seconds"] = round(time.perf_counter() - began, 1)

    table = tables(results)
    checks = target_checks(results)
    check_lines = [f"- {'met' if met else 'NOT met'}: {what} ({figures})" for what, met, figures in checks]
    print("\n" + table + "\n\nTargets:\n" + "\n".join(check_lines))
    print(f"\nbenchmark took {results['bench_seconds'] / 60:.1f} min")
    suffix = "" if args.device == "cpu" else f"-{args.device}"
    write_json(BENCH_DIR / f"bench{suffix}.json", {**results, "targets": checks})
    write_text(BENCH_DIR / f"bench{suffix}.md", table + "\n\nTargets:\n" + "\n".join(check_lines) + "\n")
    print(f"written: {BENCH_DIR / f'bench{suffix}.md'}")


if __name__ == "__main__":
    main()
