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


# ------------------------------------------------------------------- sanity check (Adebayo et al. 2018), banding


def test_rank_correlations_are_spearman_per_map() -> None:
    from scipy.stats import rankdata

    from plantlib.inference.saliency_checks import rank_correlations

    rng = np.random.default_rng(1)
    a, b = rng.random((5, 4, 4)), rng.random((5, 4, 4))
    expected = [np.corrcoef(rankdata(x.ravel()), rankdata(y.ravel()))[0, 1] for x, y in zip(a, b, strict=True)]
    assert np.allclose(rank_correlations(a, b), expected)
    assert np.allclose(rank_correlations(a, np.exp(3 * a)), 1.0)  # ranks only: any increasing transform is 1
    assert np.allclose(rank_correlations(a, -a), -1.0)
    flat = rank_correlations(a[:2], np.stack([np.ones((4, 4)), b[1]]))
    assert np.isnan(flat[0]) and np.isfinite(flat[1])
    with pytest.raises(ValueError, match="cannot be compared"):
        rank_correlations(a, b[:, :2])


def test_image_independence_is_high_for_one_shared_pattern_and_low_for_independent_maps() -> None:
    from plantlib.inference.saliency_checks import agreement, contrast, image_independence

    rng = np.random.default_rng(2)
    bands = np.tile(np.array([0.0, 1.0, 0.2, 0.9, 0.1, 0.8, 0.3]), (7, 1))  # vertical bands at fixed columns
    banded = bands + rng.normal(0, 0.1, size=(30, 7, 7))
    independent = rng.random((30, 7, 7))
    assert np.median(image_independence(banded)) > 0.8
    assert abs(np.median(image_independence(independent))) < 0.2
    assert np.median(agreement(banded, bands)) > 0.8 and abs(np.median(agreement(independent, bands))) < 0.2
    assert np.median(contrast(banded)) > 5 * np.median(contrast(1 + 0.01 * independent))
    assert np.isnan(contrast(np.zeros((1, 7, 7)))[0])
    with pytest.raises(ValueError, match="3 or more"):
        image_independence(banded[:2])


def _changed(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_randomised_copy_reinitialises_the_head_and_top_blocks_only_and_leaves_the_model_alone() -> None:
    from plantlib.errors import ConfigError
    from plantlib.inference.saliency_checks import randomised_copy
    from plantlib.models.backbones import backbone_blocks, build_model

    model = build_model("efficientnet_lite0", 2, pretrained=False, head="linear")
    before = {name: value.clone() for name, value in model.state_dict().items()}

    def changed_units(copy: torch.nn.Module) -> list[bool]:
        pairs = zip(backbone_blocks(model), backbone_blocks(copy), strict=True)
        return [any(_changed(a, b) for a, b in zip(u, v, strict=True)) for u, v in pairs]

    cam = randomised_copy(model, "cam", seed=0)
    units = len(backbone_blocks(model))
    assert changed_units(cam) == [False] * (units - 1) + [True]  # lite0's CAM layer (_conv_head): the last block
    assert not torch.equal(cam.head[1].weight, model.head[1].weight)
    assert all(changed_units(randomised_copy(model, "all")))
    assert sum(changed_units(randomised_copy(model, 3))) == 3
    again = randomised_copy(model, "cam", seed=0)
    assert all(torch.equal(p, q) for p, q in zip(cam.parameters(), again.parameters(), strict=True))
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    with pytest.raises(ConfigError, match="blocks='top'"):
        randomised_copy(model, "top")


def test_the_sanity_check_finds_maps_that_depend_on_the_learned_weights(corner_run: tuple[Path, Path]) -> None:
    from plantlib.inference.saliency_checks import SANITY_THRESHOLD, rank_correlations, saliency_sanity_check

    run_dir, data = corner_run
    loaded = load_model(run_dir, engine="torch")
    files = sorted((data / "square").glob("*.png"))
    before = {name: value.clone() for name, value in loaded.model.state_dict().items()}
    same = saliency_sanity_check(loaded, files, against=loaded.model)
    assert np.allclose(same.spearman, 1.0) and same.median == pytest.approx(1.0) and not same.passed
    assert "barely change" in same.sentence()
    check = saliency_sanity_check(loaded, files, blocks="all")
    assert check.trained_maps.shape == check.other_maps.shape == (len(files), 4, 4)
    assert np.allclose(check.spearman, rank_correlations(check.trained_maps, check.other_maps), equal_nan=True)
    assert check.median < SANITY_THRESHOLD and check.passed
    assert f"{check.median:.2f} over {len(files)} images" in check.sentence()
    assert "depend on the learned weights" in check.sentence()
    assert all(torch.equal(before[name], value) for name, value in loaded.model.state_dict().items())


def test_the_shift_test_tells_a_map_that_follows_the_image_from_one_that_stays(corner_run: tuple[Path, Path]) -> None:
    """The corner model's maps are all alike (the square is always at the top left), yet they follow the square
    when the image is shifted: image independence alone cannot tell content at fixed places from position cues."""
    from plantlib.inference.explain import preprocess
    from plantlib.inference.saliency_checks import banding_diagnosis, content_free_images, finer_layer

    run_dir, data = corner_run
    loaded = load_model(run_dir, engine="torch")
    images = preprocess(loaded, sorted((data / "square").glob("*.png")))
    references = content_free_images(loaded, noise_images=2)
    square = loaded.class_names.index("square")
    measured = banding_diagnosis(loaded.model, images, square, references)
    assert measured["map_side"] == 4 and measured["independence"] > 0.5, measured
    assert measured["follows_shift"] > measured["stays_in_place"] + 0.3, measured
    assert not measured["agrees_with_blank"] >= 0.5, measured  # flat (NaN) or unlike: the pattern needs the square
    finer = banding_diagnosis(loaded.model, images, square, references, layer=finer_layer(loaded.model, 128))
    assert finer["map_side"] == 2 * measured["map_side"]
