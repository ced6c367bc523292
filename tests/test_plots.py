"""Every figure function returns a Figure with the expected panels and content, and renders to PNG."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from plantlib.evaluation import plots
from plantlib.evaluation.metrics import compute_metrics, predictions_frame

CLASSES = ["dandelion", "grass"]


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def render(fig: Figure) -> bytes:
    """Draw the figure to PNG bytes (the real rendering path) and close it."""
    assert isinstance(fig, Figure)
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=40)
    plt.close(fig)
    data = buffer.getvalue()
    assert data.startswith(b"\x89PNG")
    return data


def texts(fig: Figure) -> list[str]:
    """All text drawn in the figure: titles, annotations, legend entries, suptitle."""
    found = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    return [t for t in found if t]


def make_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"img_{index}.png"
        Image.new("RGB", (12 + index, 10), (40 * index % 255, 200, 30)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def metrics_case() -> tuple[np.ndarray, np.ndarray, dict]:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, 40)
    logits = rng.normal(size=(40, 2)) + 1.5 * np.eye(2)[y_true]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true, probs, compute_metrics(y_true, probs, CLASSES, n_bootstrap=50)


def test_plot_history_draws_loss_accuracy_and_lr() -> None:
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1 / e + 0.2 * (e > 3),
            "train_accuracy": 0.5 + 0.1 * e,
            "val_accuracy": 0.5 + 0.08 * e,
            "lr": 1e-3 * 0.5**e,
            "seconds": 2.0,
        }
        for e in range(1, 6)
    ]
    fig = plots.plot_history(history)
    loss_ax, accuracy_ax, lr_ax = fig.axes
    assert len(loss_ax.lines) == 3 and len(accuracy_ax.lines) == 3  # train, val, best-epoch marker
    assert len(lr_ax.lines) == 1
    assert any("best val loss (epoch 3)" in t for t in texts(fig))
    render(fig)
    assert "no training history yet" in texts(plots.plot_history([]))


def test_confusion_matrix_is_annotated_and_draws_into_a_given_axis(metrics_case) -> None:
    _, _, metrics = metrics_case
    fig = plots.plot_confusion_matrix(metrics["confusion_matrix"], CLASSES)
    assert len(fig.axes) == 1
    annotations = [t.get_text() for t in fig.axes[0].texts]
    assert annotations == [str(v) for row in metrics["confusion_matrix"] for v in row]
    render(fig)
    owner, ax = plt.subplots()
    assert plots.plot_confusion_matrix([[0.5, 0.5], [0.25, 0.75]], CLASSES, normalized=True, ax=ax) is owner
    assert [t.get_text() for t in ax.texts] == ["0.50", "0.50", "0.25", "0.75"]
    assert plt.fignum_exists(owner.number), "the caller's figure must stay open"
    with pytest.raises(ValueError, match="square"):
        plots.plot_confusion_matrix([[1, 2, 3]], CLASSES)


def test_confusion_matrices_side_by_side(metrics_case) -> None:
    _, _, metrics = metrics_case
    fig = plots.plot_confusion_matrices(metrics, CLASSES)
    assert len(fig.axes) == 2
    assert all(len(ax.texts) == 4 for ax in fig.axes)
    assert "(row-normalised)" in fig.axes[1].get_title()
    render(fig)
    fig = plots.plot_confusion_matrices(metrics)  # class names from the metrics
    assert fig.axes[0].get_xticklabels()[1].get_text() == "grass"


def test_roc_pr_binary_and_multiclass(metrics_case) -> None:
    y_true, probs, metrics = metrics_case
    fig = plots.plot_roc_pr(y_true, probs, CLASSES)
    roc_ax, pr_ax = fig.axes
    assert f"grass (AUC {metrics['roc_auc']:.3f})" in roc_ax.get_legend_handles_labels()[1]
    assert any("AP" in label for label in pr_ax.get_legend_handles_labels()[1])
    render(fig)
    rng = np.random.default_rng(1)
    three = rng.dirichlet(np.ones(3), 30)
    fig = plots.plot_roc_pr(np.arange(30) % 3, three, ["a", "b", "c"])
    assert len(fig.axes[0].lines) == 4  # three classes + chance
    render(fig)
    fig = plots.plot_roc_pr(np.zeros(5, dtype=int), three[:5], ["a", "b", "c"])
    assert any("one class only" in t for t in texts(fig))


def test_reliability_from_metrics_or_reliability_dict(metrics_case) -> None:
    _, _, metrics = metrics_case
    fig = plots.plot_reliability(metrics)
    assert len(fig.axes) == 2
    assert f"ECE {metrics['ece']:.3f}" in fig.axes[0].get_title()
    assert len(fig.axes[1].patches) == 10
    render(fig)
    fig = plots.plot_reliability(metrics["reliability"])
    assert f"ECE {metrics['ece']:.3f}" in fig.axes[0].get_title()


def test_image_grid_shows_thumbnails_and_marks_unreadable_files(tmp_path) -> None:
    paths = make_images(tmp_path, 3)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    fig = plots.plot_image_grid([*paths, broken, tmp_path / "missing.png"], titles=list("abcde"), ncols=2)
    assert len(fig.axes) == 5  # the spare sixth cell is removed
    assert all(len(ax.images) == 1 for ax in fig.axes)
    assert [ax.get_title() for ax in fig.axes] == list("abcde")
    assert sum("unreadable" in [t.get_text() for t in ax.texts] for ax in fig.axes) == 2
    render(fig)
    assert "no images to show" in texts(plots.plot_image_grid([]))
    with pytest.raises(ValueError, match="titles"):
        plots.plot_image_grid(paths, titles=["only one"])


def test_confident_mistakes_resolve_relative_paths_and_order(tmp_path) -> None:
    make_images(tmp_path / "imgs", 4)
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    frame = predictions_frame([f"imgs/img_{i}.png" for i in range(4)], np.array([1, 1, 1, 0]), probs, CLASSES)
    fig = plots.plot_confident_mistakes(frame, n=2, root=tmp_path)
    assert [" ".join(ax.get_title().split()) for ax in fig.axes] == [
        "grass → dandelion (p=0.90)",
        "dandelion → grass (p=0.80)",
    ]
    assert all("unreadable" not in [t.get_text() for t in ax.texts] for ax in fig.axes)
    assert "2 of 3 misclassified" in fig.get_suptitle()
    render(fig)
    right = predictions_frame(["a.png"], np.array([0]), np.array([[0.8, 0.2]]), CLASSES)
    fig = plots.plot_confident_mistakes(right)
    assert "no misclassified images" in texts(fig)


def test_class_counts_and_size_distribution() -> None:
    fig = plots.plot_class_counts({"dandelion": 30, "grass": 25})
    assert len(fig.axes[0].patches) == 2
    assert "55 images in 2 classes" in fig.axes[0].get_title()
    render(fig)
    rng = np.random.default_rng(0)
    sizes = pd.DataFrame(
        {"width": rng.integers(100, 600, 30), "height": rng.integers(100, 600, 30), "label": ["a", "b"] * 15}
    )
    fig = plots.plot_size_distribution(sizes)
    scatter_ax, hist_ax = fig.axes
    assert scatter_ax.collections and (hist_ax.patches or hist_ax.collections)
    render(fig)
    assert len(plots.plot_size_distribution(sizes.drop(columns="label")).axes) == 2
    with pytest.raises(ValueError, match="height"):
        plots.plot_size_distribution(sizes.drop(columns="height"))


def test_tensor_grid_unnormalises_images() -> None:
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    pictures = torch.rand(4, 3, 8, 8)
    normalised = (pictures - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    fig = plots.plot_tensor_grid(normalised, mean, std, titles=["a", "b", "c", "d"], ncols=3)
    assert len(fig.axes) == 4
    shown = np.asarray(fig.axes[0].images[0].get_array())
    np.testing.assert_allclose(shown, pictures[0].permute(1, 2, 0).numpy(), atol=1e-5)
    render(fig)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        plots.plot_tensor_grid(torch.rand(3, 8, 8), mean, std)


def test_save_figure_writes_png_and_closes(tmp_path) -> None:
    fig = plots.plot_class_counts({"a": 1, "b": 2})
    path = plots.save_figure(fig, tmp_path / "figs" / "counts.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in path.parent.iterdir()] == ["counts.png"]


def fake_study(storage: Path, trials: int, direction: str = "maximize") -> None:
    """A study of `trials` finished trials with made-up values (nothing trains), as `tune` would store it."""
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    from plantlib.experiments.tune import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=open_storage(str(storage)), study_name="s", direction=direction)
    space = {
        "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
        "dropout": FloatDistribution(0.2, 0.6),
        "frozen_blocks": IntDistribution(4, 6),
    }
    rng = np.random.default_rng(0)
    for number in range(trials):
        params = {"weight_decay": 4.2e-06 * (number + 1), "dropout": float(rng.uniform(0.2, 0.6))}
        params["frozen_blocks"] = 4 + number % 3
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=0.5 + 0.04 * number))


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_study_figures_draw_every_trial_visibly_and_importances_only_from_enough_trials(
    tmp_path: Path, direction: str
) -> None:
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgba

    from plantlib.experiments.tune import IMPORTANCE_MIN_TRIALS, study_figures

    style = dict(plt.rcParams)
    fake_study(tmp_path / "few.log", 3, direction)
    figures = study_figures(str(tmp_path / "few.log"), "s")
    assert list(figures) == ["history", "parallel"]  # 3 trials: importances would be noise
    [lines] = [c for c in figures["parallel"].axes[0].collections if isinstance(c, LineCollection)]
    colours = lines.to_rgba(np.asarray(lines.get_array()))  # what each trial is drawn in
    assert len(colours) == 3
    linear = np.where(colours[:, :3] <= 0.03928, colours[:, :3] / 12.92, ((colours[:, :3] + 0.055) / 1.055) ** 2.4)
    luminance = linear @ np.array([0.2126, 0.7152, 0.0722])
    assert (1.05 / (luminance + 0.05)).min() >= 3  # every trial, the worst too, at 3:1 contrast on white (Blues: ~1)
    assert to_rgba(figures["parallel"].axes[0].get_facecolor()) == to_rgba("white")
    best, worst = (2, 0) if direction == "maximize" else (0, 2)
    values = np.asarray(lines.get_array())
    assert luminance[np.argmax(values == values[best])] < luminance[np.argmax(values == values[worst])]  # best darkest
    for figure in figures.values():
        render(figure)
    assert dict(plt.rcParams) == style  # optuna's ggplot style does not leak into later figures
    fake_study(tmp_path / "enough.log", IMPORTANCE_MIN_TRIALS, direction)
    assert list(study_figures(str(tmp_path / "enough.log"), "s")) == ["history", "importances", "parallel"]


def test_trials_frame_names_columns_for_a_narrow_table(tmp_path: Path) -> None:
    from plantlib.experiments.tune import study_limits, study_overview, trials_frame
    from plantlib.reporting.notebook import table

    fake_study(tmp_path / "j.log", 3)
    frame = trials_frame(str(tmp_path / "j.log"), "s")
    assert list(frame.columns) == ["trial", "state", "value", "dropout", "frozen_blocks", "weight_decay", "seconds"]
    assert set(frame["state"]) == {"complete"}
    shown = table(frame).data
    assert "4.2e-06" in shown and "0.0000" not in shown and "weight decay" in shown
    overview = study_overview(str(tmp_path / "j.log"), "s")
    assert (overview.complete, overview.pruned, overview.failed, overview.scored_images) == (3, 0, 0, None)
    limits = " ".join(study_limits(overview))
    assert (
        limits.startswith("The best of 3 trials is an optimistic estimate")
        and "cannot rank hyperparameters" in limits
        and "none are drawn" in limits
    )
