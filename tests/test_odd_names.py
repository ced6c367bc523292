"""Names that are not UTF-8 (or look like escapes) work from scan to predict, and CSVs round-trip them; names that
look like markup stay text in the model card and the ONNX metadata."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from plantlib.data.names import as_text, file_in, from_text
from plantlib.data.split import load_split, save_split
from plantlib.evaluation.metrics import save_evaluation
from tests.conftest import tiny_config, write_dataset

TINY = ["--backbone", "resnet18", "--no-pretrained", "--image-size", "48", "--batch-size", "4", "--epochs", "1"]
TINY += ["--val-fraction", "0.25", "--test-fraction", "0.25"]
MARKUP = "<img src=x onerror=alert(1)>"  # a class folder name that is live HTML wherever it is pasted raw


def name(raw: bytes) -> str:
    """A file name as Python sees it on Linux: undecodable bytes become surrogate escapes."""
    return os.fsdecode(raw)


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Latin-1 data folder and class folder, Latin-1 and invalid-byte file names, a name with a literal `\\x`."""
    root = tmp_path_factory.mktemp("names") / name(b"d\xe9ta")
    write_dataset(root, {"ant": 8, "bee": 8})
    os.rename(root / "bee", root / name(b"b\xe9e"))
    for i, file in enumerate(sorted((root / "ant").iterdir())[:3]):
        file.rename(file.with_name(name(b"caf\xe9-\xff%d.jpg" % i)))
    (root / "ant" / "0005.jpg").rename(root / "ant" / "lit\\xe9ral ü.jpg")  # valid UTF-8 that looks escaped
    return root


def plantlib_cli(*args: str, root: Path) -> subprocess.CompletedProcess:
    """`python -m plantlib ARGS`; output decoded the way the file names were (bytes kept as escapes)."""
    env = {**os.environ, "PLANTLIB_ROOT": str(root)}
    return subprocess.run(
        [sys.executable, "-m", "plantlib", *args], capture_output=True, text=True, errors="surrogateescape", env=env
    )


def test_names_that_are_not_utf8_work_from_scan_to_predict(odd_dataset: Path, tmp_path: Path) -> None:
    on_disk = {p for p in odd_dataset.rglob("*.jpg")}
    runs, evaluation, predictions = tmp_path / "runs", tmp_path / "evaluation", tmp_path / "predictions.csv"

    scan = plantlib_cli("scan", "--data-dir", str(odd_dataset), root=tmp_path)
    assert scan.returncode == 0 and "usable       16 of 16 files" in scan.stdout, scan.stderr
    train = plantlib_cli("train", "--data-dir", str(odd_dataset), "--output-dir", str(runs), *TINY, root=tmp_path)
    assert train.returncode == 0, train.stderr
    (run_dir,) = runs.iterdir()
    evaluate = plantlib_cli(
        "evaluate", str(run_dir), "--data-dir", str(odd_dataset), "--out-dir", str(evaluation), root=tmp_path
    )
    assert evaluate.returncode == 0 and "n=16" in evaluate.stdout, evaluate.stderr
    predict = plantlib_cli("predict", str(run_dir), str(odd_dataset), "--out", str(predictions), root=tmp_path)
    assert predict.returncode == 0, predict.stderr
    for result in (scan, train, evaluate, predict):
        assert "Traceback" not in result.stderr and "UnicodeEncodeError" not in result.stderr

    # Every CSV names each image once, and each name leads back to the very file on disk.
    predicted = pd.read_csv(predictions, keep_default_na=False)
    assert {file_in(None, p) for p in predicted["path"]} == on_disk
    evaluated = pd.read_csv(evaluation / "predictions.csv", keep_default_na=False)
    assert {file_in(odd_dataset, p) for p in evaluated["path"]} == on_disk
    assert set(evaluated["true"]) == {"ant", "b\\xe9e"}
    split = load_split(next((tmp_path / "data" / "splits").iterdir()))
    assert {file_in(odd_dataset, p) for p in split["path"]} == on_disk
    assert (evaluation / "metrics.json").is_file()


def test_escaped_names_round_trip_exactly() -> None:
    every_byte = name(bytes(range(0x80, 0x100))) + "/plain \\x41 ü"
    text = as_text(every_byte)
    assert text.encode("utf-8") and from_text(text) == every_byte
    assert as_text("plain/ü.jpg") == "plain/ü.jpg"


def test_a_split_csv_round_trips_names_and_labels_like_na(tmp_path: Path) -> None:
    split = pd.DataFrame(
        {
            "path": ["NA/1.jpg", as_text(name(b"b\xe9e/\xff.jpg")), "null/é.jpg"],
            "label": ["NA", as_text(name(b"b\xe9e")), "null"],
            "split": ["train", "val", "test"],
            "group": [0, 1, 2],
        }
    )
    save_split(split, tmp_path / "split.csv")
    again = load_split(tmp_path / "split.csv")
    assert again["path"].tolist() == split["path"].tolist() and again["label"].tolist() == split["label"].tolist()


def test_metrics_are_never_left_without_their_predictions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = pd.DataFrame({"path": ["a.jpg"], "predicted": ["ant"], "p_ant": [1.0]})

    def failing_csv(self, *args, **kwargs):
        raise UnicodeEncodeError("utf-8", "\udce9", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(pd.DataFrame, "to_csv", failing_csv)
    with pytest.raises(UnicodeEncodeError):
        save_evaluation(tmp_path, {"accuracy": 1.0}, frame)
    assert list(tmp_path.iterdir()) == []


def test_class_names_that_look_like_markup_stay_text_in_the_model_card_and_onnx_metadata(tmp_path: Path) -> None:
    import onnx

    from plantlib.inference.export import export_run
    from plantlib.training.trainer import Trainer

    mistune = pytest.importorskip("mistune")  # a Markdown renderer that passes raw HTML through, like MLflow's UI
    data = write_dataset(tmp_path / name(b"d\xe9ta`<b>x"), {"ant": 8, "bee": 8})
    os.rename(data / "ant", data / MARKUP)
    os.rename(data / "bee", data / "b|e`e")
    config = tiny_config(data, tmp_path / "runs", backbone="resnet18", pretrained=False, image_size=48, epochs=1)
    run_dir = Trainer.build(config.replace(batch_size=4), show_progress=False).fit().run_dir
    model_file, card_file, page_file = export_run(run_dir)

    card = card_file.read_text(encoding="utf-8")
    assert "<" not in card.replace("<b>x", "")  # the data folder's name is shown inside a code span only
    assert "- Classes: &lt;img src=x onerror=alert(1)&gt;, b\\|e\\`e." in card
    for page in (mistune.html(card), page_file.read_text(encoding="utf-8")):
        assert "<img" not in page and "<b>" not in page
        assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&amp;lt;" not in page  # shown, escaped once
        assert "b|e`e" in page
    metadata = {p.key: p.value for p in onnx.load(str(model_file)).metadata_props}
    assert "<" not in metadata["class_names"] and json.loads(metadata["class_names"]) == [MARKUP, "b|e`e"]
