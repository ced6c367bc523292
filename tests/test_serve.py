"""`plantlib serve`: the real server on a free port answers predictions equal to `plantlib predict`, batches
concurrent clients, and refuses every kind of bad input with a 4xx and a one-line reason (never a 500)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from plantlib.inference.export import export_run
from plantlib.inference.predictor import load_model, predict_files
from plantlib.serving.app import ServeSettings, create_app
from plantlib.training.trainer import Trainer
from tests.conftest import run_cli, tiny_config, write_dataset


@dataclass
class Server:
    url: str
    run_dir: Path
    images: list[Path]
    process: subprocess.Popen
    log: Path
    health_seen: list[str]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_ready(process: subprocess.Popen, url: str, log: Path, timeout_s: float = 180) -> list[str]:
    """Poll /health until it says ready; the statuses seen on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server ended early:\n{log.read_text()}"
        try:
            answer = httpx.get(f"{url}/health", timeout=2)
            seen.append(f"{answer.status_code} {answer.json()['status']}")
            if answer.status_code == 200:
                return seen
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"the server was not ready in {timeout_s} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("serve")
    data = write_dataset(root / "images", {"cat": 12, "dog": 12})
    result = Trainer.build(tiny_config(data, root / "runs", epochs=1), show_progress=False).fit()
    return result.run_dir, sorted(data.rglob("*.jpg"))


@contextlib.contextmanager
def serving(source: Path, log: Path) -> Iterator[tuple[subprocess.Popen, str, list[str]]]:
    """`plantlib serve SOURCE` on a free port in its own session, its output in `log`: (process, URL, the /health
    statuses seen while it got ready); stopped by SIGTERM to its PID afterwards."""
    port = free_port()
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "plantlib", "serve", str(source), "--port", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        yield process, url, wait_until_ready(process, url, log)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(trained: tuple[Path, list[Path]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    run_dir, images = trained
    log = tmp_path_factory.mktemp("server") / "serve.log"
    with serving(run_dir, log) as (process, url, seen):
        yield Server(url, run_dir, images, process, log, seen)
    assert process.returncode in (0, -signal.SIGTERM), log.read_text()  # uvicorn shuts down, then re-raises
    assert "Traceback" not in log.read_text()


def jpeg_bytes(path: Path) -> bytes:
    return path.read_bytes()


def test_health_says_loading_until_the_model_is_ready(server: Server) -> None:
    assert server.health_seen[-1] == "200 ready"
    assert set(server.health_seen[:-1]) <= {"503 loading"}
    health = httpx.get(f"{server.url}/health").json()
    assert health["model"] == server.run_dir.name and health["version"].startswith("sha256:")
    assert set(health["batching"]) >= {"batches", "images", "largest_batch"}


def test_model_endpoint_gives_classes_metrics_and_card(server: Server) -> None:
    info = httpx.get(f"{server.url}/model").json()
    assert info["class_names"] == ["cat", "dog"] and info["kind"] == "checkpoint" and info["explains"]
    assert info["engine"] == "openvino" and info["preprocessing"]["center_crop"] == 64
    accuracy = next(row for row in info["headline_metrics"] if row["name"] == "Accuracy")
    low, high = accuracy["ci95"]
    assert low <= accuracy["value"] <= high and accuracy["n"] >= 6 and "95% CI" in accuracy["text"]
    assert info["card"].startswith(f"# Model card: {server.run_dir.name}")
    assert "/predict" in httpx.get(f"{server.url}/openapi.json").json()["paths"]


def test_the_api_page_loads_its_script_and_style_from_the_server_itself(server: Server) -> None:
    page = httpx.get(f"{server.url}/docs").text
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert "swagger" in page.lower() and len(sources) >= 3
    assert all(source.startswith("/") for source in sources), sources  # nothing from a CDN or another host
    for source in sources:
        assert httpx.get(f"{server.url}{source}").status_code == 200, source


def test_predictions_equal_plantlib_predict(server: Server) -> None:
    files = server.images[:5]
    expected = predict_files(load_model(server.run_dir), files)
    many = httpx.post(f"{server.url}/predict", files=[("files", (f.name, f.read_bytes(), "image/jpeg")) for f in files])
    assert many.status_code == 200, many.text
    body = many.json()
    assert body["model"]["name"] == server.run_dir.name and len(body["predictions"]) == 5
    served = np.array([[p["probabilities"][c] for c in ("cat", "dog")] for p in body["predictions"]])
    np.testing.assert_allclose(served, expected[["p_cat", "p_dog"]].to_numpy(), atol=1e-5)
    assert [p["predicted"] for p in body["predictions"]] == expected["predicted"].tolist()
    raw = httpx.post(f"{server.url}/predict", content=files[0].read_bytes(), headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200
    assert raw.json()["predictions"][0]["probabilities"]["cat"] == pytest.approx(expected["p_cat"].iloc[0], abs=1e-5)


def test_explain_returns_a_heat_map_overlay(server: Server) -> None:
    answer = httpx.post(
        f"{server.url}/predict?explain=true&tta=true",
        files=[("files", ("a.jpg", server.images[0].read_bytes(), "image/jpeg"))],
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    result = answer.json()["predictions"][0]
    assert answer.json()["tta"] is True
    header, encoded = result["overlay_png"].split(",", 1)
    assert header == "data:image/png;base64"
    picture = Image.open(io.BytesIO(__import__("base64").b64decode(encoded)))
    assert picture.format == "PNG" and picture.size == (64, 64)


def test_concurrent_clients_are_all_answered_in_shared_batches(server: Server) -> None:
    before = httpx.get(f"{server.url}/health").json()["batching"]
    payloads = [server.images[i % len(server.images)].read_bytes() for i in range(48)]

    def post(data: bytes) -> int:
        answer = httpx.post(f"{server.url}/predict", content=data, headers={"content-type": "image/jpeg"}, timeout=60)
        return answer.status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(post, payloads))
    assert statuses == [200] * 48
    after = httpx.get(f"{server.url}/health").json()["batching"]
    assert after["images"] - before["images"] == 48
    assert after["batches"] - before["batches"] < 48  # some passes carried several requests' images
    assert after["largest_batch"] > 1


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header that claims `width` x `height` pixels (no pixel data): the pixel check must refuse it first."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def truncated_jpeg(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


def bad_requests(images: list[Path]) -> dict[str, tuple[dict, int, str]]:
    """kind -> (httpx.post arguments, status, start of the message)."""
    photo = images[0].read_bytes()
    raw = {"content-type": "image/jpeg"}
    return {
        "empty body": ({"content": b"", "headers": raw}, 400, "empty request body"),
        "wrong content type": ({"content": b'{"a": 1}', "headers": {"content-type": "application/json"}}, 415, ""),
        "text file named .jpg": ({"files": [("files", ("notes.jpg", b"hello, I am text", "image/jpeg"))]}, 422, ""),
        "text part in the form": ({"files": [("files", ("notes.txt", b"hello", "text/plain"))]}, 415, "notes.txt"),
        "truncated JPEG": ({"content": truncated_jpeg(images[1]), "headers": raw}, 422, "body: truncated"),
        "too many files": ({"files": [("files", (f"{i}.jpg", photo, "image/jpeg")) for i in range(33)]}, 413, ""),
        "over the byte limit": ({"content": b"\xff" * (16 * 2**20 + 1), "headers": raw}, 413, "request body of"),
        "over the pixel limit": ({"content": png_claiming(20_000, 20_000), "headers": raw}, 413, "body: more pixels"),
        "urlencoded form": ({"data": {"note": "x"}}, 415, "content type 'application/x-www-form-urlencoded'"),
        "bad query value": ({"content": photo, "headers": raw, "params": {"tta": "maybe"}}, 422, "query.tta"),
    }


BAD_KINDS = list(bad_requests([Path(__file__)] * 2))


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_gets_a_4xx_with_one_line(server: Server, kind: str) -> None:
    arguments, status, start = bad_requests(server.images)[kind]
    answer = httpx.post(f"{server.url}/predict", timeout=30, **arguments)
    message = answer.json()["error"]
    assert answer.status_code == status, message
    assert message.startswith(start) and "\n" not in message and "Traceback" not in message
    assert httpx.get(f"{server.url}/health").status_code == 200  # the server is still up


def test_unknown_paths_and_methods_answer_json(server: Server) -> None:
    assert httpx.get(f"{server.url}/nothing-here").json() == {"error": "Not Found"}
    assert httpx.get(f"{server.url}/predict").status_code == 405


def test_serve_refuses_a_busy_port_and_a_missing_model(server: Server, tmp_path: Path) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    busy = run_cli("serve", str(server.run_dir), "--port", str(port))
    assert busy.returncode == 2 and f"port {port} on 127.0.0.1 is taken" in busy.stderr
    missing = run_cli("serve", str(tmp_path / "nope.pt"), "--port", str(free_port()))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


def test_an_onnx_export_serves_the_same_probabilities_and_declines_heat_maps(trained: tuple[Path, list[Path]]) -> None:
    run_dir, images = trained
    export_dir = export_run(run_dir)[0].parent
    expected = predict_files(load_model(run_dir), images[:4])
    with TestClient(create_app(ServeSettings(source=str(export_dir)))) as client:
        deadline = time.monotonic() + 120
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        info = client.get("/model").json()
        assert info["kind"] == "onnx" and not info["explains"] and info["headline_metrics"]
        answer = client.post("/predict", files=[("files", (f.name, f.read_bytes(), "image/jpeg")) for f in images[:4]])
        served = np.array([[p["probabilities"][c] for c in ("cat", "dog")] for p in answer.json()["predictions"]])
        np.testing.assert_allclose(served, expected[["p_cat", "p_dog"]].to_numpy(), atol=1e-5)
        refused = client.post(
            "/predict?explain=true", content=images[0].read_bytes(), headers={"content-type": "image/png"}
        )
        assert refused.status_code == 400 and "needs the checkpoint" in refused.json()["error"]
