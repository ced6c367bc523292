"""Do the Grad-CAM maps show what the model learnt, and where do the bands on grass photos come from?

Sanity check (Adebayo et al. 2018, model randomisation): the trained model's maps of the test images against those
of copies re-initialised from the head down (to the CAM layer's block, then further, then the whole network),
as median Spearman correlations. Banding diagnosis (`inference.saliency_checks.banding_diagnosis`), for grass and
dandelion test images, the trained and the randomised models, and two layers (the backbone's `cam_layer`, 7x7 at
224 px, and the last finer block, 14x14): how much each map shares with the others' mean (image independence) at
the layer's resolution and after bilinear upsampling, whether a map moves with its image when the image is
shifted (shift test), how flat the raw maps are before each overlay's [0, 1] scaling, and whether they match the
map of a blank or a noise image.

    python -m benchmarks.saliency [--run RUN_DIR] [--method gradcam]

Without --run it reuses the newest finished default-recipe run under artifacts/bench/runs, or trains one there
(default recipe, efficientnet_lite0, 6 epochs: a few minutes on 2 CPU cores). Writes artifacts/bench/saliency.md
and saliency.png (trained vs randomised maps of a few grass and dandelion test images, and the mean grass map).
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from benchmarks.measure import BENCH_DIR, bench_config
from benchmarks.verdicts import markdown_table
from plantlib.evaluation.plots import save_figure
from plantlib.inference import explain, saliency_checks
from plantlib.inference.predictor import LoadedModel, load_model, run_data
from plantlib.io import write_text
from plantlib.models.backbones import backbone_blocks, get_spec
from plantlib.runs import RunDir, list_runs

RANDOMISED = {"trained": None, "randomised to the CAM block": "cam", "fully randomised": "all"}
SHOWN_PER_CLASS = 4  # images per class in the figure


def default_run() -> Path:
    """The newest finished run of the default recipe under artifacts/bench/runs, trained here when there is none."""
    wanted = bench_config().recipe()
    for run in reversed(list_runs(BENCH_DIR / "runs")):
        folder = RunDir(run)
        if (
            folder.status() == "finished"
            and folder.best_checkpoint.is_file()
            and folder.read_config().recipe() == wanted
        ):
            return run
    from plantlib.training.trainer import Trainer

    return Trainer.build(bench_config(tracking="off"), show_progress=True).fit().run_dir


def test_images(loaded: LoadedModel) -> dict[str, list[Path]]:
    """The run's test images by true class."""
    frame = run_data(loaded).frame("test")
    return {label: [Path(f) for f in group["file"]] for label, group in frame.groupby("label", sort=True)}


def models(loaded: LoadedModel) -> dict[str, torch.nn.Module]:
    return {
        name: loaded.model if blocks is None else saliency_checks.randomised_copy(loaded.model, blocks)
        for name, blocks in RANDOMISED.items()
    }


def sanity_rows(loaded: LoadedModel, files: dict[str, list[Path]], method: str) -> list[dict]:
    rows = []
    for blocks in ("cam", "all"):
        for label, group in files.items():
            check = saliency_checks.saliency_sanity_check(loaded, group, method, blocks=blocks)
            rows.append(
                {
                    "randomised": blocks,
                    "images": label,
                    "n": len(group),
                    "flat maps": check.undefined,
                    "median Spearman (map)": round(check.median, 3),
                    "median Spearman (upsampled)": round(check.median_upsampled, 3),
                }
            )
    return rows


def cascade_rows(loaded: LoadedModel, files: Sequence[Path], method: str) -> list[dict]:
    """The paper's cascading randomisation: re-initialise more and more blocks from the top."""
    total = len(backbone_blocks(loaded.model))
    rows = []
    for blocks in sorted({0, 1, 2, 3, 5, 8, 12, total}):
        check = saliency_checks.saliency_sanity_check(loaded, files, method, blocks=blocks)
        rows.append(
            {
                "re-initialised": "head" + (f" + top {blocks} of {total} blocks" if blocks else ""),
                "median Spearman (map)": round(check.median, 3),
                "flat maps": check.undefined,
            }
        )
    return rows


def diagnosis_rows(
    loaded: LoadedModel, files: dict[str, list[Path]], networks: dict[str, torch.nn.Module], method: str
) -> list[dict]:
    layers = {get_spec(loaded.model.backbone_name).cam_layer: None}
    finer = saliency_checks.finer_layer(loaded.model, loaded.image_size)
    layers[finer.removeprefix("backbone.")] = finer
    references = saliency_checks.content_free_images(loaded)
    rows = []
    for label, group in files.items():
        images = explain.preprocess(loaded, group)
        target = loaded.class_names.index(label)
        for model_name, network in networks.items():
            for layer_name, layer in layers.items():
                measured = saliency_checks.banding_diagnosis(network, images, target, references, method, layer)
                side = int(measured.pop("map_side"))
                row = {"images": label, "model": model_name, "layer": f"{layer_name} ({side}x{side})"}
                rows.append(row | {name: round(value, 3) for name, value in measured.items()})
    return rows


def _row(diagnosis: pd.DataFrame, images: str, model: str, cam_layer: str, at_cam: bool = True) -> pd.Series:
    rows = diagnosis[(diagnosis["images"] == images) & (diagnosis["model"] == model)]
    return rows[rows["layer"].str.startswith(cam_layer + " ") == at_cam].iloc[0]


def banding_verdict(diagnosis: pd.DataFrame, cam_layer: str) -> str:
    """Model or method, from the trained model's grass maps at the CAM layer, with the facts it rests on.

    Model: the raw maps share a pattern that stays in place when the image is shifted (a position cue of the
    network) and upsampling adds none. Method: upsampling adds the pattern, or it moves with the image.
    """
    grass = _row(diagnosis, "grass", "trained", cam_layer)
    finer = _row(diagnosis, "grass", "trained", cam_layer, at_cam=False)
    dandelion = _row(diagnosis, "dandelion", "trained", cam_layer)
    random = _row(diagnosis, "grass", "fully randomised", cam_layer)
    position_bound = grass["stays_in_place"] > grass["follows_shift"]
    upsampling_adds = grass["independence_upsampled"] > grass["independence"] + 0.1
    facts = [
        f"image independence of the grass maps {grass['independence']:.2f} at 7x7, "
        f"{grass['independence_upsampled']:.2f} upsampled; dandelion {dandelion['independence']:.2f}",
        f"shift test (grass): follows the shifted image {grass['follows_shift']:.2f}, stays in place "
        f"{grass['stays_in_place']:.2f}; dandelion {dandelion['follows_shift']:.2f} vs "
        f"{dandelion['stays_in_place']:.2f}",
        f"raw map contrast (std/mean): grass {grass['contrast']:.2f}, dandelion {dandelion['contrast']:.2f}",
        f"finer layer ({finer['layer']}): grass independence {finer['independence']:.2f}, shift test "
        f"{finer['follows_shift']:.2f} vs {finer['stays_in_place']:.2f}",
        f"content-free images: grass maps agree with a blank image's map {grass['agrees_with_blank']:.2f}, "
        f"a noise image's {grass['agrees_with_noise']:.2f}; fully randomised model's maps: independence "
        f"{random['independence']:.2f} (the architecture's own border pattern)",
    ]
    if grass["independence"] < 0.3:
        cause = "no shared pattern in the grass maps at the CAM layer: no banding to explain"
    elif upsampling_adds:
        cause = "METHOD: bilinear upsampling of the 7x7 map adds the shared pattern"
    elif not position_bound:
        cause = "neither: the grass maps share a pattern but move with the image (content at similar places)"
    else:
        cause = (
            "MODEL: the bands are a position cue of the trained network, in the raw 7x7 maps before any "
            "upsampling, staying in place when the image moves (on a uniform texture only the borders, i.e. "
            "padding, can vary a convolution's output); upsampling only draws each hot cell as a diamond"
        )
        if grass["contrast"] < dandelion["contrast"] / 1.5:
            cause += (
                "; the method makes it visible: grass maps are nearly flat and each overlay's [0, 1] scaling "
                "stretches the cue"
            )
        if finer["independence"] < grass["independence"] - 0.3:
            cause += "; a finer layer's maps do not show it"
    return "Banding verdict: " + cause + ".\n  " + "\n  ".join(facts)


def figure(loaded: LoadedModel, files: dict[str, list[Path]], networks: dict[str, torch.nn.Module], method: str):  # type: ignore[no-untyped-def]
    """Rows: grass and dandelion test images; columns: the crop and each model's upsampled map; last row: the
    mean raw map of every grass test image for each model."""
    import matplotlib.pyplot as plt

    shown = [f for group in files.values() for f in group[:SHOWN_PER_CLASS]]
    images = explain.preprocess(loaded, shown)
    crops = explain.explain_files(loaded, shown, method)
    predicted = [loaded.class_names.index(e.predicted) for e in crops]
    grass = explain.preprocess(loaded, files["grass"])
    target = [loaded.class_names.index("grass")] * len(grass)
    size = loaded.image_size
    fig, axes = plt.subplots(len(shown) + 1, len(networks) + 1, figsize=(2.2 * (len(networks) + 1), 2.2 * len(shown)))
    for column, (name, network) in enumerate(networks.items(), start=1):
        maps = explain.upsample(explain.cam_maps(network, images, method, predicted)[0], size)
        for row, heat in enumerate(maps):
            axes[row, column].imshow(crops[row].crop)
            axes[row, column].imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1)
        mean = explain.cam_maps(network, grass, method, target, normalized=False)[0].mean(0)
        axes[-1, column].imshow(mean, cmap="jet")
        axes[0, column].set_title(name, fontsize=8)
    for row, item in enumerate(crops):
        axes[row, 0].imshow(item.crop)
        axes[row, 0].set_title(f"{item.path.parent.name}: {item.predicted}", fontsize=7)
    axes[-1, 0].set_title(f"mean raw grass map\n({len(grass)} test images) →", fontsize=7)
    for axis in axes.flat:
        axis.set_axis_off()
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run directory (default: reuse or train one, see above)")
    parser.add_argument("--method", default="gradcam", choices=explain.CAM_METHODS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    run = args.run or default_run()
    loaded = load_model(run, engine="torch")
    files = test_images(loaded)
    networks = models(loaded)
    cam_layer = get_spec(loaded.model.backbone_name).cam_layer
    sanity = pd.DataFrame(sanity_rows(loaded, files, args.method))
    cascade = pd.DataFrame(cascade_rows(loaded, [f for group in files.values() for f in group], args.method))
    diagnosis = pd.DataFrame(diagnosis_rows(loaded, files, networks, args.method))
    verdict = banding_verdict(diagnosis, cam_layer)
    lines = [
        f"# Saliency checks ({platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')})",
        "",
        f"run: {run}, {loaded.model.backbone_name} at {loaded.image_size} px, {args.method}, test images: "
        + ", ".join(f"{label} {len(group)}" for label, group in files.items()),
        "",
        "## Sanity check (model randomisation, Adebayo et al. 2018)",
        "",
        markdown_table(sanity),
        "",
        "## Cascading randomisation (all test images)",
        "",
        markdown_table(cascade),
        "",
        "## Banding diagnosis (medians over the test images of each class, maps of that class)",
        "",
        markdown_table(diagnosis),
        "",
        verdict,
        "",
    ]
    text = "\n".join(lines)
    print(text)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    write_text(BENCH_DIR / "saliency.md", text)
    save_figure(figure(loaded, files, networks, args.method), BENCH_DIR / "saliency.png", dpi=110)
    print(f"written: {BENCH_DIR / 'saliency.md'}, {BENCH_DIR / 'saliency.png'} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
