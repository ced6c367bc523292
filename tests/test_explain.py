"""Heat maps point at the evidence: a model whose only cue is a red square in one corner looks at that corner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from plantlib.inference.explain import explain_files, heatmap_peak, overlay
from plantlib.inference.predictor import load_model
from plantlib.training.trainer import Trainer
from tests.conftest import run_cli, tiny_config

SIZE = 150  # the square (15..55 px) stays inside the 128 px centre crop the network sees


def corner_dataset(root: Path, per_class: int = 24) -> Path:
    """Noise backgrounds drawn alike for both classes; only 'square' images carry a red square at the top left."""
    rng = np.random.default_rng(0)
    for label in ("plain", "square"):
        (root / label).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(40, 200, size=(SIZE // 10, SIZE // 10, 3), dtype=np.uint8)
            image = Image.fromarray(pixels).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
            if label == "square":
                image.paste((230, 20, 20), (15, 15, 55, 55))
            image.save(root / label / f"{index:03d}.png")
    return root


@pytest.fixture(scope="module")
def corner_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("explain")
    data = corner_dataset(root / "images")
    config = tiny_config(
        data, root / "runs", image_size=128, epochs=6, batch_size=8, head="linear", dropout=0.0, learning_rate=3e-3
    )
    result = Trainer.build(config, show_progress=False).fit()
    assert result.test_metrics["accuracy"] >= 0.75, result.test_metrics  # it learnt the cue
    return result.run_dir, data


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_the_heat_map_peaks_in_the_corner_with_the_square(corner_run: tuple[Path, Path], method: str) -> None:
    run_dir, data = corner_run
    loaded = load_model(run_dir, engine="torch")
    files = sorted((data / "square").glob("*.png"))
    explained = [e for e in explain_files(loaded, files, method) if e.predicted == "square"]
    assert len(explained) >= 12
    peaks = [heatmap_peak(e.heatmap) for e in explained]
    in_corner = [x < 0.4 and y < 0.4 for x, y in peaks]
    assert np.mean(in_corner) >= 0.8, peaks
    assert all(e.heatmap.shape == (128, 128) and e.heatmap.min() >= 0 and e.heatmap.max() <= 1 for e in explained)
    picture = overlay(explained[0])
    assert picture.size == (128, 128) and picture.mode == "RGB"


def test_an_overlay_is_red_where_the_map_is_hot_and_blue_where_it_is_cold() -> None:
    from plantlib.inference.explain import Explanation

    heat = np.zeros((64, 64), dtype=np.float32)
    heat[:16, :16] = 1.0
    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    pixels = np.asarray(overlay(Explanation(Path("x.png"), "a", 0.9, heat, grey))).astype(int)
    hot, cold = pixels[4, 4], pixels[48, 48]
    assert hot[0] > hot[2] + 40 and cold[2] > cold[0] + 40, (hot, cold)
    assert np.abs(np.diff(pixels[40:60, 40:60], axis=1)).max() <= 2  # a cold area is flat, not banded


def test_explain_command_writes_a_png_per_image_and_a_csv_and_skips_bad_files(
    corner_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir, data = corner_run
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    files = [str(p) for p in sorted((data / "square").glob("*.png"))[:3]]
    out = tmp_path / "maps"
    result = run_cli("explain", str(run_dir / "best.pt"), *files, str(broken), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "skipped 1 of 4 files" in result.stderr and "broken.jpg" in result.stderr
    table = pd.read_csv(out / "explanations.csv")
    assert list(table["path"]) == files and set(table["predicted"]) <= {"plain", "square"}
    assert [p.name for p in sorted(out.glob("*.png"))] == list(table["heatmap"])
    assert all(Image.open(out / name).size[0] > 300 for name in table["heatmap"])  # image and overlay side by side


def test_every_registered_backbone_names_a_layer_that_gives_a_map() -> None:
    from torchcam.methods import GradCAM

    from plantlib.models.backbones import backbone_names, build_model, cam_target_layer

    for name in backbone_names():
        model = build_model(name, 2, pretrained=False, head="linear").eval()
        images = torch.rand(2, 3, 96, 96, requires_grad=True)
        with GradCAM(model, target_layer=cam_target_layer(model)) as extractor:
            scores = model(images)
            [maps] = extractor(class_idx=[0, 1], scores=scores)
        assert maps.shape[0] == 2 and maps.dim() == 3 and maps.shape[1] >= 3, name  # a spatial map, not a vector
