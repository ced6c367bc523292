"""Every file of a folder-per-class tree through scan, training-data loading and predict; one JSON line per file.

`tests/test_decoder_fuzz.py` runs this in its own process under a memory limit and a timeout, so a file that
crashes a decoder, blows up memory or hangs fails the test instead of the test run (or the machine).
"""

import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from plantlib.checkpoint import save_checkpoint
from plantlib.config import RunConfig
from plantlib.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DecodedImageCache,
    ImageDataset,
    ImageDecodeError,
    eval_transform,
    scan_dataset,
    train_transform,
)
from plantlib.data.dataset import resize_side
from plantlib.inference.predictor import load_model, predict_files, readable_images
from plantlib.models.backbones import build_model

IMAGE_SIZE = 224  # the default input size: the one whose resizes cost the most


def timed(step: Callable[[], str | None]) -> tuple[str, float]:
    """'ok', 'skipped: <reason>' (a reason returned or an ImageDecodeError) or 'crash: <error>'; and the seconds."""
    started = time.perf_counter()
    try:
        reason = step()
        outcome = f"skipped: {reason}" if reason else "ok"
    except ImageDecodeError as error:
        outcome = f"skipped: {error}"
    except BaseException as error:  # a crash is what this reports
        outcome = f"crash: {error.__class__.__name__}: {error}"
    return outcome, round(time.perf_counter() - started, 3)


def tiny_checkpoint(folder: Path, classes: list[str]) -> Path:
    """An untrained resnet18 checkpoint at the default input size: predict runs the real path, quickly."""
    config = RunConfig(backbone="resnet18", pretrained=False, image_size=IMAGE_SIZE, freeze_bn=False)
    model = build_model("resnet18", len(classes), pretrained=False, head=config.head)
    normalization = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    path = folder / "tiny.pt"
    payload = {"model": model.state_dict(), "config": config.to_dict(), "class_names": classes}
    save_checkpoint(path, {**payload, "normalization": normalization})
    return path


def main(root: Path, work: Path) -> None:
    warnings.simplefilter("ignore")  # skipped files are reported below, not warned about
    torch.set_num_threads(1)
    scan = scan_dataset(root, cache_dir=work / "cache", show_progress=False)
    rows = list(scan.records.itertuples())
    files = [root / row.path for row in rows]
    report = {row.path: {"scan": "ok" if row.ok else f"skipped: {row.reason}"} for row in rows}

    cache = DecodedImageCache(max_side=resize_side(IMAGE_SIZE))
    train = ImageDataset(files, [0] * len(files), train_transform(IMAGE_SIZE), cache)
    evaluation = ImageDataset(files, [0] * len(files), eval_transform(IMAGE_SIZE), cache)
    loaded = load_model(tiny_checkpoint(work, scan.classes), engine="torch")
    predict_cache = loaded.image_cache()

    def load(index: int) -> None:
        train[index], evaluation[index]  # decoded, cropped, resized: what a training epoch does

    def predict(file: Path) -> str | None:
        good, bad = readable_images([file], predict_cache)
        if bad:
            return bad[0][1]
        loaded.probabilities(good, cache=predict_cache)
        return None

    for index, row in enumerate(rows):
        report[row.path]["load"], report[row.path]["load_s"] = timed(lambda: load(index))  # noqa: B023
        report[row.path]["predict"], report[row.path]["predict_s"] = timed(lambda: predict(files[index]))  # noqa: B023
    frame = predict_files(loaded, [root])
    peak = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmPeak"))
    print(json.dumps({"files": report, "predicted_rows": len(frame), "vm_peak": peak.split(":")[1].strip()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
