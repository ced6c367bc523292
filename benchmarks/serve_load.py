"""Load test of `plantlib serve`: images/s and p50/p99 latency at 1, 8 and 32 concurrent clients, one image per
request, against the batched images/s of `plantlib predict` measured in the same invocation.

The server is the real one (`python -m plantlib serve`, a subprocess on a free loopback port, default OpenVINO
engine); the load generator is an asyncio httpx client in this process. Writes artifacts/bench/serve_load.md
and .json.

    python -m benchmarks.serve_load [--model RUN_DIR] [--seconds 15] [--clients 1 8 32]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.measure import BENCH_DIR
from plantlib.config import RunConfig
from plantlib.data.images import is_image_name
from plantlib.errors import PlantlibError
from plantlib.inference.predictor import load_model
from plantlib.io import write_json, write_text
from plantlib.paths import builtin_data_dir
from plantlib.runs import RunDir, latest_run

Z95 = 1.96


def quick_run() -> Path:
    """A lite0 run on the built-in data, one epoch (the model's accuracy is not what is measured here)."""
    from plantlib.data.fetch import fetch_dataset
    from plantlib.training.trainer import Trainer

    fetch_dataset()
    config = RunConfig(data_dir=str(builtin_data_dir()), epochs=1, output_dir=str(BENCH_DIR / "serve-runs"))
    return Trainer.build(config, show_progress=False).fit().run_dir


def predict_baseline(run_dir: Path, files: list[Path], repeats: int = 3) -> dict[str, Any]:
    """`plantlib predict`'s path (decode, crop, batches of 32, default engine): images/s per repeat, fresh cache."""
    loaded = load_model(run_dir)
    loaded.probabilities(files[:32], 32)  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        loaded.probabilities(files, 32, loaded.image_cache())
        rates.append(len(files) / (time.perf_counter() - started))
    return {"images_per_s": float(np.mean(rates)), "ci95": mean_ci(rates), "n": repeats, "images": len(files)}


def mean_ci(values: list[float]) -> list[float]:
    """Normal-approximation 95% interval of a mean (t would be wider for very few values; n is reported)."""
    array = np.asarray(values, dtype=float)
    half = Z95 * array.std(ddof=1) / math.sqrt(len(array)) if len(array) > 1 else float("nan")
    return [float(array.mean() - half), float(array.mean() + half)]


def quantile_ci(values: np.ndarray, q: float) -> list[float]:
    """Distribution-free 95% interval of the q-quantile: order statistics around rank n*q (binomial)."""
    ordered, n = np.sort(values), len(values)
    spread = Z95 * math.sqrt(n * q * (1 - q))
    low, high = max(0, math.floor(n * q - spread)), min(n - 1, math.ceil(n * q + spread))
    return [float(ordered[low]), float(ordered[high])]


async def load(url: str, payloads: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    """`clients` loops posting one image each for `seconds`; latencies (ms), completion times, errors."""
    latencies: list[float] = []
    finished: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def user(number: int) -> None:
            index = number
            while time.perf_counter() - start < seconds:
                sent = time.perf_counter()
                try:
                    answer = await client.post(
                        "/predict", content=payloads[index % len(payloads)], headers={"content-type": "image/jpeg"}
                    )
                    if answer.status_code != 200:
                        errors.append(f"{answer.status_code} {answer.text[:100]}")
                except httpx.HTTPError as error:
                    errors.append(repr(error))
                latencies.append(1000 * (time.perf_counter() - sent))
                finished.append(time.perf_counter() - start)
                index += clients

        await asyncio.gather(*(user(i) for i in range(clients)))
    return summarise(np.asarray(latencies), np.asarray(finished), errors, clients, seconds)


def summarise(latencies: np.ndarray, finished: np.ndarray, errors: list[str], clients: int, seconds: float) -> dict:
    per_second = np.bincount(np.minimum(finished.astype(int), int(seconds) - 1), minlength=int(seconds))
    return {
        "clients": clients,
        "requests": len(latencies),
        "images_per_s": float(per_second.mean()),
        "images_per_s_ci95": mean_ci(per_second.tolist()),
        "seconds": int(seconds),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p50_ci95": quantile_ci(latencies, 0.5),
        "p99_ms": float(np.percentile(latencies, 99)),
        "p99_ci95": quantile_ci(latencies, 0.99),
        "errors": len(errors),
        "first_errors": errors[:3],
    }


def start_server(run_dir: Path, workers: int = 1) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "plantlib", "serve", str(run_dir), "--port", str(port), "--workers", str(workers)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.kill()
    raise SystemExit(f"the server did not become ready (exit status {server.poll()})")


def table(results: list[dict[str, Any]], before: dict[str, Any], after: dict[str, Any], batching: dict) -> str:
    def ci(pair: list[float], digits: int = 0) -> str:
        return f"{pair[0]:.{digits}f}–{pair[1]:.{digits}f}"

    lines = [
        "| clients | requests (n) | images/s (95% CI, n = seconds) | p50 ms (95% CI) | p99 ms (95% CI) | errors |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['clients']} | {r['requests']} | {r['images_per_s']:.0f} ({ci(r['images_per_s_ci95'])}, "
            f"n = {r['seconds']}) | {r['p50_ms']:.1f} ({ci(r['p50_ci95'], 1)}) | {r['p99_ms']:.1f} "
            f"({ci(r['p99_ci95'], 1)}) | {r['errors']} |"
        )
    lines += [
        "",
        f"Baseline `plantlib predict` (batches of 32, same engine, fresh decode), before / after the load: "
        f"{before['images_per_s']:.0f} (95% CI {ci(before['ci95'])}) / {after['images_per_s']:.0f} "
        f"(95% CI {ci(after['ci95'])}) images/s, n = {before['n']} passes over {before['images']} images each.",
        f"Server batching over the whole run: {batching['batches']} engine passes for {batching['images']} images, "
        f"mean batch {batching['mean_batch']}, largest {batching['largest_batch']}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="run directory (default: newest finished run, else train one)")
    parser.add_argument("--seconds", type=float, default=15.0, help="load duration per client count")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--workers", type=int, default=1, help="server processes (`plantlib serve --workers`)")
    args = parser.parse_args()
    run_dir = args.model or _default_run()
    data = Path(RunDir(run_dir).read_config().data_dir)
    files = sorted(p for p in data.rglob("*") if p.is_file() and is_image_name(p))[:128]
    baseline = predict_baseline(run_dir, files)
    server, url = start_server(run_dir, args.workers)
    try:
        payloads = [f.read_bytes() for f in files]
        asyncio.run(load(url, payloads, 4, 3.0))  # warm-up: connections, first batches
        results = [asyncio.run(load(url, payloads, clients, args.seconds)) for clients in args.clients]
        batching = httpx.get(f"{url}/health").json()["batching"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    after = predict_baseline(run_dir, files)  # again: a shared machine's load drifts during the run
    text = f"Model {run_dir.name}; {args.workers} server worker(s); {len(files)} images cycled; one per request.\n\n"
    text += table(results, baseline, after, batching)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    stem = "serve_load" if args.workers == 1 else f"serve_load-workers{args.workers}"
    write_text(BENCH_DIR / f"{stem}.md", text)
    write_json(BENCH_DIR / f"{stem}.json", {"run": str(run_dir), "baseline": [baseline, after], "load": results})
    print(text)


def _default_run() -> Path:
    try:
        return latest_run()
    except PlantlibError:
        return quick_run()


if __name__ == "__main__":
    main()
