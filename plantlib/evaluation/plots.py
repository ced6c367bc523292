"""Figures for exploring data and judging a trained classifier; each function returns a matplotlib Figure.

Figures are made with pyplot so notebooks display them, and nothing here calls `plt.show` or changes global
styles. Scripts that make many figures should save them with `save_figure`, which also closes them.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from plantlib.data.images import ImageDecodeError, load_rgb
from plantlib.data.names import file_in
from plantlib.evaluation.metrics import arrays_from_predictions, check_predictions_frame, class_columns, misclassified
from plantlib.io import atomic_write

_THUMBNAIL_PIXELS = 256  # longest side kept in memory per grid tile: plenty for a 2-inch tile
_UNREADABLE_GREY = 0.6


def save_figure(fig: Figure, path: Path, dpi: int = 120, close: bool = True) -> Path:
    """Save `fig` atomically (format from the suffix) and, by default, close it so scripts do not leak figures."""
    path = Path(path)
    buffer = BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()), mode="wb")
    if close:
        plt.close(fig)
    return path


def message_figure(message: str, size: tuple[float, float] = (5.0, 2.0)) -> Figure:
    """A figure that says why there is nothing to draw, so a report shows the reason instead of a gap."""
    fig, ax = plt.subplots(figsize=size)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def draw_image_tile(ax: Axes, path: Path, max_pixels: int = _THUMBNAIL_PIXELS) -> None:
    """The image at `path` in `ax`, or a grey tile saying why it cannot be decoded."""
    try:
        image, _ = load_rgb(path)
        image.thumbnail((max_pixels, max_pixels))
        ax.imshow(image)
    except ImageDecodeError as error:
        ax.imshow(np.full((8, 8, 3), _UNREADABLE_GREY), vmin=0, vmax=1)
        ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes, fontsize=9)
        short = textwrap.shorten(str(error), 40)
        ax.text(0.5, 0.15, short, ha="center", va="center", transform=ax.transAxes, fontsize=6)


def resolve_path(path: str | Path, root: Path | None) -> Path:
    """`path` as it is when absolute (or without a root), else relative to `root`; escaped names made exact."""
    return file_in(root, path)


def _tile_grid(n: int, ncols: int, size: float, titled: bool) -> tuple[Figure, list[Axes]]:
    """A grid of `n` square tiles with axes hidden; spare cells in the last row are removed."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    height = size * nrows + (0.35 * nrows if titled else 0.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, height), squeeze=False, layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        fig.delaxes(ax)
    for ax in flat[:n]:
        ax.set_axis_off()
    return fig, flat[:n]


def _tile_title(ax: Axes, title: str, size: float) -> None:
    width = max(12, int(size * 11))
    ax.set_title(textwrap.fill(str(title), width=width, max_lines=3, placeholder="…"), fontsize=8)


def plot_history(history: list[dict]) -> Figure:
    """Loss, accuracy and learning rate per epoch: shows over-fitting and whether the schedule did what it should.

    The epoch with the lowest validation loss is marked, since that is usually the checkpoint kept.
    """
    if not history:
        return message_figure("no training history yet")
    frame = pd.DataFrame(history)
    if "epoch" not in frame.columns:
        frame["epoch"] = np.arange(1, len(frame) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
    panels = (("loss", "loss"), ("accuracy", "accuracy"))
    for ax, (metric, label) in zip(axes[:2], panels, strict=True):
        for split in ("train", "val"):
            column = f"{split}_{metric}"
            if column in frame.columns and frame[column].notna().any():
                ax.plot(frame["epoch"], frame[column], marker="o", markersize=3, label=split)
        ax.set(title=label, xlabel="epoch", ylabel=label)
        ax.grid(alpha=0.3)
    if "val_loss" in frame.columns and frame["val_loss"].notna().any():
        best = frame.loc[frame["val_loss"].idxmin(), "epoch"]
        for ax in axes[:2]:
            ax.axvline(best, color="grey", linestyle=":", label=f"best val loss (epoch {best})")
    for ax in axes[:2]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    lr_ax = axes[2]
    if "lr" in frame.columns and frame["lr"].notna().any():
        lr_ax.plot(frame["epoch"], frame["lr"], marker="o", markersize=3, color="tab:green")
        lr = frame["lr"].dropna()
        if (lr > 0).all() and lr.max() / lr.min() > 20:
            lr_ax.set_yscale("log")
    else:
        lr_ax.text(0.5, 0.5, "no learning rate logged", ha="center", va="center", transform=lr_ax.transAxes)
    lr_ax.set(title="learning rate", xlabel="epoch", ylabel="lr")
    lr_ax.grid(alpha=0.3)
    if "seconds" in frame.columns and frame["seconds"].notna().any():
        fig.suptitle(f"{len(frame)} epochs · {frame['seconds'].sum():.0f} s in total")
    return fig


def plot_confusion_matrix(
    matrix: list[list[float]] | np.ndarray,
    class_names: list[str],
    normalized: bool = False,
    ax: Axes | None = None,
) -> Figure:
    """Annotated heatmap, rows = true class, columns = predicted; draws into `ax` when given."""
    values = np.asarray(matrix, dtype=np.float64)
    if values.shape != (len(class_names), len(class_names)):
        raise ValueError(f"matrix has shape {values.shape}; expected a square matrix for classes {class_names}")
    if ax is None:
        side = 2.0 + 0.9 * len(class_names)
        fig, ax = plt.subplots(figsize=(side + 0.5, side), layout="constrained")
    else:
        fig = ax.figure
    if normalized:
        sns.heatmap(values, annot=True, fmt=".2f", vmin=0.0, vmax=1.0, cmap="Blues", cbar=False, ax=ax)
    else:
        sns.heatmap(values.round().astype(int), annot=True, fmt="d", vmin=0, cmap="Blues", cbar=False, ax=ax)
    ax.set_xticklabels(
        class_names, rotation=30 if len(class_names) > 4 else 0, ha="right" if len(class_names) > 4 else "center"
    )
    ax.set_yticklabels(class_names, rotation=0)
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title="confusion matrix " + ("(row-normalised)" if normalized else "(counts)"),
    )
    return fig


def plot_confusion_matrices(metrics: dict, class_names: list[str] | None = None) -> Figure:
    """Counts and row-normalised confusion matrices side by side, from `compute_metrics` output."""
    if class_names is None:
        class_names = metrics.get("class_names") or list(metrics["per_class"])
    side = 2.0 + 0.9 * len(class_names)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.0, side), layout="constrained")
    plot_confusion_matrix(metrics["confusion_matrix"], class_names, normalized=False, ax=axes[0])
    plot_confusion_matrix(metrics["confusion_matrix_normalized"], class_names, normalized=True, ax=axes[1])
    return fig


def _one_vs_rest(
    y_true: np.ndarray, probs: np.ndarray, class_names: list[str]
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, is-this-class, score) per curve: class 1 alone for binary, every class for multiclass."""
    indices = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    return [(class_names[k], y_true == k, probs[:, k]) for k in indices]


def plot_roc_pr(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> Figure:
    """ROC and precision–recall curves with AUC / average precision in the legend.

    Binary tasks draw the positive class (index 1); multiclass draws one-vs-rest per class. A class
    without both positives and negatives in y_true has no curve and is named in the panel instead.
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    skipped = []
    for name, positive, score in _one_vs_rest(y_true, probs, class_names):
        if positive.all() or not positive.any():
            skipped.append(name)
            continue
        fpr, tpr, _ = roc_curve(positive, score)
        roc_ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(positive, score):.3f})")
        precision, recall, _ = precision_recall_curve(positive, score)
        line = pr_ax.step(
            recall, precision, where="post", label=f"{name} (AP {average_precision_score(positive, score):.3f})"
        )
        pr_ax.axhline(positive.mean(), color=line[0].get_color(), linestyle=":", linewidth=1)
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
    roc_ax.set(title="ROC", xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02))
    pr_ax.set(
        title="precision–recall (dotted: prevalence)", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02)
    )
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        ax.set_aspect("equal")
        if skipped:
            ax.text(
                0.5,
                0.5,
                "no curve (one class only in y_true): " + ", ".join(skipped),
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=9,
                wrap=True,
            )
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right" if ax is roc_ax else "lower left", fontsize=8)
    return fig


def plot_reliability(metrics_or_reliability: dict) -> Figure:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with bin counts underneath.

    Accepts `compute_metrics` output or its "reliability" entry. Bars below the diagonal mean over-confidence.
    """
    fig, (ax, count_ax) = plt.subplots(
        2, 1, figsize=(5.5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, layout="constrained"
    )
    _draw_reliability(ax, count_ax, metrics_or_reliability, "reliability")
    return fig


def plot_reliability_before_after(before: dict, after: dict, n: int | None = None) -> Figure:
    """Two reliability diagrams side by side: without and with calibration (temperature scaling), same images.

    Each side takes what `plot_reliability` takes (e.g. `compare_calibration(...)["before"]` and `["after"]`).
    """
    fig, axes = plt.subplots(
        2, 2, figsize=(10, 6), sharex=True, sharey="row", gridspec_kw={"height_ratios": [3, 1]}, layout="constrained"
    )
    for column, (label, part) in enumerate((("uncalibrated", before), ("calibrated", after))):
        _draw_reliability(axes[0, column], axes[1, column], part, label)
    if n is not None:
        fig.suptitle(f"reliability before and after temperature scaling (n = {n})")
    return fig


def _draw_reliability(ax: Axes, count_ax: Axes, metrics_or_reliability: dict, title: str) -> None:
    """One reliability diagram (accuracy bars, gap to confidence, diagonal) over its bin counts."""
    reliability = metrics_or_reliability.get("reliability", metrics_or_reliability)
    lower = np.asarray(reliability["bin_lower"], dtype=np.float64)
    upper = np.asarray(reliability["bin_upper"], dtype=np.float64)
    counts = np.asarray(reliability["count"], dtype=np.float64)
    accuracy = np.array([np.nan if a is None else a for a in reliability["accuracy"]], dtype=np.float64)
    confidence = np.array([np.nan if c is None else c for c in reliability["confidence"]], dtype=np.float64)
    ece = metrics_or_reliability.get("ece")
    if ece is None:
        filled = counts > 0
        ece = float(np.sum(counts[filled] * np.abs(accuracy[filled] - confidence[filled])) / max(counts.sum(), 1))
    width = upper - lower
    ax.bar(lower, np.nan_to_num(accuracy), width=width, align="edge", edgecolor="black", alpha=0.8, label="accuracy")
    gap = np.nan_to_num(confidence - accuracy)
    ax.bar(
        lower,
        gap,
        bottom=np.nan_to_num(accuracy),
        width=width,
        align="edge",
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        hatch="//",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"{title} (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    count_ax.bar(lower, counts, width=width, align="edge", edgecolor="black", color="tab:grey")
    count_ax.set(xlabel="confidence (top-1 probability)", ylabel="images")


def plot_image_grid(
    paths: Sequence[Path | str], titles: list[str] | None = None, ncols: int = 6, size: float = 2.0
) -> Figure:
    """Thumbnails of image files; a file that cannot be decoded shows as a grey "unreadable" tile."""
    if titles is not None and len(titles) != len(paths):
        raise ValueError(f"got {len(titles)} titles for {len(paths)} images; pass one title per image or none")
    if not paths:
        return message_figure("no images to show")
    fig, axes = _tile_grid(len(paths), ncols, size, titled=titles is not None)
    for index, (ax, path) in enumerate(zip(axes, paths, strict=True)):
        draw_image_tile(ax, Path(path))
        if titles is not None:
            _tile_title(ax, titles[index], size)
    return fig


def plot_confident_mistakes(frame: pd.DataFrame, n: int = 12, root: Path | None = None) -> Figure:
    """The `n` most confidently wrong images titled "true → predicted (p=…)": label errors and hard cases.

    Relative paths in `frame` are resolved against `root`; absolute paths are used as they are.
    """
    wrong = misclassified(frame)
    if wrong.empty:
        return message_figure("no misclassified images")
    shown = wrong.head(n)
    paths = [resolve_path(p, root) for p in shown["path"]]
    titles = [f"{row.true} → {row.predicted} (p={row.confidence:.2f})" for row in shown.itertuples()]
    fig = plot_image_grid(paths, titles, ncols=min(6, len(paths)), size=2.2)
    fig.suptitle(f"most confidently wrong: {len(shown)} of {len(wrong)} misclassified")
    return fig


def plot_explanations(
    items: Sequence[tuple[Image.Image, Image.Image, str]], method: str = "gradcam", pairs_per_row: int = 3
) -> Figure:
    """Each image beside its heat-map overlay (red: where the evidence for the prediction lies), captioned."""
    if not items:
        return message_figure("no images to explain")
    columns = 2 * max(1, min(pairs_per_row, len(items)))
    fig, axes = _tile_grid(2 * len(items), columns, 2.2, titled=True)
    for index, (image, heat, text) in enumerate(items):
        picture, overlay = axes[2 * index], axes[2 * index + 1]
        picture.imshow(image)
        overlay.imshow(heat)
        _tile_title(picture, text, 2.2)
        _tile_title(overlay, {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++"}.get(method, method), 2.2)
    return fig


def plot_lr_find(learning_rates: Sequence[float], losses: Sequence[float], suggestion: float | None) -> Figure:
    """Smoothed training loss against a growing learning rate (log scale), with the suggested rate marked."""
    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    ax.plot(learning_rates, losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (head)")
    ax.set_ylabel("training loss (smoothed)")
    if suggestion is not None:
        ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested {suggestion:.1e}")
        ax.legend()
    ax.set_title("learning-rate range test")
    return fig


def plot_class_counts(counts: dict[str, int]) -> Figure:
    """Images per class as labelled bars, to spot class imbalance before training."""
    if not counts:
        return message_figure("no classes to count")
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(counts), 3.5), layout="constrained")
    names = [str(name) for name in counts]
    bars = ax.bar(names, list(counts.values()), color=sns.color_palette(n_colors=len(counts)))
    ax.bar_label(bars, padding=2)
    ax.set(xlabel="class", ylabel="images", title=f"{sum(counts.values())} images in {len(counts)} classes")
    ax.margins(y=0.12)
    return fig


def plot_size_distribution(frame: pd.DataFrame) -> Figure:
    """Image sizes (scatter) and aspect ratios (histogram): decides resize/crop policy and flags odd files.

    Coloured by class when `frame` has a "label" column; rows without a positive width and height are skipped.
    """
    missing = {"width", "height"} - set(frame.columns)
    if missing:
        raise ValueError(f"frame needs width and height columns; missing {sorted(missing)}")
    sizes = frame[(frame["width"] > 0) & (frame["height"] > 0)].copy()
    if sizes.empty:
        return message_figure("no image sizes to show")
    sizes["aspect ratio (w/h)"] = sizes["width"] / sizes["height"]
    hue = "label" if "label" in sizes.columns else None
    fig, (scatter_ax, hist_ax) = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    sns.scatterplot(data=sizes, x="width", y="height", hue=hue, alpha=0.6, s=18, ax=scatter_ax)
    scatter_ax.set(title=f"image sizes (n={len(sizes)})", xlabel="width (px)", ylabel="height (px)")
    sns.histplot(data=sizes, x="aspect ratio (w/h)", hue=hue, bins=30, element="step", ax=hist_ax)
    hist_ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    hist_ax.set(title="aspect ratio")
    return fig


def plot_tensor_grid(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    titles: list[str] | None = None,
    ncols: int = 6,
) -> Figure:
    """Show a batch of normalised (N, 3, H, W) tensors as pictures, e.g. to preview augmentations."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a (N, 3, H, W) batch; got shape {tuple(images.shape)}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"got {len(titles)} titles for {len(images)} images; pass one title per image or none")
    if len(images) == 0:
        return message_figure("no images to show")
    batch = images.detach().to("cpu", torch.float32)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    pictures = (batch * std_t + mean_t).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    fig, axes = _tile_grid(len(pictures), ncols, 2.0, titled=titles is not None)
    for index, (ax, picture) in enumerate(zip(axes, pictures, strict=True)):
        ax.imshow(picture)
        if titles is not None:
            _tile_title(ax, titles[index], 2.0)
    return fig


def static_prediction_gallery(
    frame: pd.DataFrame,
    root: Path | None = None,
    per_group: int = 6,
    heatmap: Callable[[Path], Image.Image] | None = None,
) -> Figure:
    """Example images per (true class × right/wrong) group, most confident first, titled "true → predicted p=…".

    One row per non-empty group, so an HTML report shows what the browser would without a kernel. Frames without
    true labels are grouped by predicted class. Relative paths are resolved against `root`. With `heatmap`
    (e.g. `plantlib.inference.explain.overlay_function(loaded)`) each tile shows the image under its heat-map overlay.
    """
    if per_group < 1:
        raise ValueError(f"per_group must be at least 1; got {per_group}")
    if frame.empty:
        return message_figure("no predictions")
    check_predictions_frame(frame)
    labelled = "true" in frame.columns and "correct" in frame.columns
    groups = _gallery_groups(frame, per_group, labelled)
    if not groups:
        return message_figure("no predictions")

    ncols = max(len(shown) for _, shown in groups)
    size = 2.0  # inches per tile
    fig, axes = plt.subplots(
        len(groups),
        ncols,
        figsize=(size * ncols + 0.8, (size + 0.4) * len(groups)),
        squeeze=False,
        layout="constrained",
    )
    for row_axes, (label, shown) in zip(axes, groups, strict=True):
        for ax in row_axes[len(shown) :]:
            fig.delaxes(ax)
        for column, (ax, row) in enumerate(zip(row_axes, shown.itertuples(index=False), strict=False)):
            path = resolve_path(row.path, root)
            if heatmap is None:
                draw_image_tile(ax, path)
            else:
                ax.imshow(heatmap(path))
            true = f"{row.true} → " if labelled else ""
            ax.set_title(f"{true}{row.predicted} p={row.confidence:.2f}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
            if column == 0:
                ax.set_ylabel(label, fontsize=9)
    overlaid = " (Grad-CAM: red marks the evidence for the prediction)" if heatmap is not None else ""
    fig.suptitle(f"example predictions: up to {per_group} per group, most confident first{overlaid}")
    return fig


def _gallery_groups(frame: pd.DataFrame, per_group: int, labelled: bool) -> list[tuple[str, pd.DataFrame]]:
    """(row label, up to `per_group` most confident rows) per non-empty (true class × right/wrong) group, or per
    predicted class when the frame has no true labels."""
    label_column = "true" if labelled else "predicted"
    classes = class_columns(frame)
    classes += sorted(set(frame[label_column].astype(str)) - set(classes))
    groups: list[tuple[str, pd.DataFrame]] = []
    for name in classes:
        of_class = frame[frame[label_column].astype(str) == name]
        if labelled:
            right = of_class["correct"].astype(bool)
            parts = [(f"{name}\nright", of_class[right]), (f"{name}\nwrong", of_class[~right])]
        else:
            parts = [(f"predicted\n{name}", of_class)]
        for label, members in parts:
            if not members.empty:
                shown = members.sort_values("confidence", ascending=False, kind="stable").head(per_group)
                groups.append((f"{label} ({len(shown)} of {len(members)})", shown))
    return groups


def save_run_figures(folder: Path, history: list[dict], metrics: dict, predictions: pd.DataFrame) -> list[Path]:
    """A finished run's figures as PNG files in `folder`: history, confusion matrices, ROC/PR, reliability."""
    class_names = list(metrics.get("class_names") or class_columns(predictions))
    y_true, probs = arrays_from_predictions(predictions, class_names)
    figures = {
        "history.png": plot_history(history),
        "confusion_matrix.png": plot_confusion_matrices(metrics, class_names),
        "roc_pr.png": plot_roc_pr(y_true, probs, class_names),
        "reliability.png": plot_reliability(metrics),
    }
    return [save_figure(figure, Path(folder) / name) for name, figure in figures.items()]


def plot_paired_differences(pairs: pd.DataFrame) -> Figure:
    """Forest plot: each pair's accuracy difference (A - B) with the interval of the verdict rule; zero marked."""
    required = ["a", "b", "difference", "ci_low", "ci_high", "verdict"]
    missing = [column for column in required if column not in pairs.columns]
    if missing:
        raise ValueError(f"pairs table is missing columns {missing}; build it with experiments.compare.pairwise_table")
    if pairs.empty:
        return message_figure("no pairs to compare")
    rows = pairs.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.6 * len(rows)), layout="constrained")
    y = np.arange(len(rows))[::-1]
    decided = rows["verdict"].str.contains("better|worse")
    colours = np.where(decided, "tab:blue", "tab:grey")
    errors = np.vstack([rows["difference"] - rows["ci_low"], rows["ci_high"] - rows["difference"]])
    for index in range(len(rows)):
        ax.errorbar(
            rows["difference"][index], y[index], xerr=errors[:, index : index + 1], fmt="o", color=colours[index],
            capsize=4,
        )  # fmt: skip
    ax.axvline(0.0, color="black", linewidth=1, linestyle=":")
    ax.set_yticks(y, [f"{row.a} − {row.b}" for row in rows.itertuples()], fontsize=8)
    ax.set(
        xlabel="accuracy difference (interval at the Holm-corrected level of each pair)",
        title="paired differences: blue = a difference claimed at 95% after Holm's correction",
    )
    ax.grid(axis="x", alpha=0.3)
    return fig
