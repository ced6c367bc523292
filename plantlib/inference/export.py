"""Hand a trained model to someone else: a self-contained ONNX file and a model card (Markdown and HTML).

The ONNX graph takes what any image library gives, uint8 RGB crops (N x 3 x H x W, 0-255), and returns class
probabilities: scaling, the backbone's normalisation, the calibration temperature and the softmax are inside it,
and the class names, input size, preprocessing, temperature and conformal scores are in its metadata. The card
says what the model was trained on, how well it does (with confidence intervals and calibration), where it
fails, and what it is for.
"""

from __future__ import annotations

import html
import json
import re
import string
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from plantlib.checkpoint import find_checkpoint
from plantlib.data.dataset import Normalization, resize_side
from plantlib.data.names import as_text
from plantlib.errors import PlantlibError
from plantlib.evaluation.metrics import interval, misclassified, with_ci
from plantlib.inference.engine import export_onnx_graph
from plantlib.inference.predictor import LoadedModel, load_model
from plantlib.io import atomic_path, write_text
from plantlib.runs import BEST_CHECKPOINT, CONFIG_FILE, METRICS_FILE, RunDir

EXPORT_FORMATS = ("onnx",)


class ProbabilitiesFromUint8(torch.nn.Module):
    """The classifier with its input handling inside: uint8 crops in, softmax probabilities out."""

    def __init__(self, model: torch.nn.Module, normalization: Normalization) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", 255.0 * torch.tensor(normalization.mean).view(1, 3, 1, 1))
        self.register_buffer("std", 255.0 * torch.tensor(normalization.std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model((images.float() - self.mean) / self.std), dim=1)


def export_onnx(loaded: LoadedModel, path: Path) -> Path:
    """Write `loaded` as one ONNX file with preprocessing, softmax and class names inside."""
    import onnx

    wrapper = ProbabilitiesFromUint8(loaded.model.cpu().eval(), loaded.normalization).eval()
    example = torch.zeros(1, 3, loaded.image_size, loaded.image_size, dtype=torch.uint8)
    with atomic_path(Path(path)) as tmp:
        export_onnx_graph(wrapper, example, tmp, "probabilities")
        graph = onnx.load(tmp)
        metadata = {
            "class_names": json_for_viewers(loaded.class_names),
            "image_size": str(loaded.image_size),
            "resize_side": str(resize_side(loaded.image_size)),
            "input": "uint8 RGB, N x 3 x H x W: shorter side resized (antialiased) to resize_side, centre crop",
            "output": "class probabilities (softmax of logits / temperature), in class_names order",
            "backbone": loaded.config.backbone,
            "temperature": repr(loaded.temperature),
            "calibration": json_for_viewers(loaded.calibration or {"method": "none", "temperature": 1.0}),
        }
        for key, value in metadata.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(graph, tmp)
    return Path(path)


def json_for_viewers(value: Any) -> str:
    """JSON whose text holds no `<`, `>`, `&` or `'` (they are written as \\u escapes, which every JSON reader
    decodes back): metadata a viewer shows or pastes into a page cannot become markup."""
    text = json.dumps(value)  # ASCII only: anything else is already a \\u escape
    for char in "<>&'":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


_MARKDOWN_PUNCTUATION = "\\`*_[]|~"


def _visible(value: Any) -> str:
    """One line of printable text: undecodable bytes and control characters (a line break) as `\\xHH`."""
    text = as_text(str(value))
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def md_text(value: Any) -> str:
    """A name or path as literal Markdown text: HTML's special characters as entities and Markdown's punctuation
    backslash-escaped, so whatever renders the card (MLflow's UI does) shows it and runs none of it."""
    escaped = html.escape(_visible(value), quote=True)  # & < > " '
    out = []
    for i, char in enumerate(escaped):
        inside_word = 0 < i < len(escaped) - 1 and escaped[i - 1].isalnum() and escaped[i + 1].isalnum()
        plain = char not in _MARKDOWN_PUNCTUATION or (char == "_" and inside_word)  # snake_case never emphasises
        out.append(char if plain else f"\\{char}")
    return "".join(out)


def md_code(value: Any) -> str:
    """A name or path as a Markdown code span, fenced by more backticks than it holds in a row (a renderer shows
    a code span's text as it is, markup included)."""
    text = _visible(value)
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text[:1] in ("`", " ") or text[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _score(metrics: dict[str, Any], key: str, ci_key: str) -> str:
    value = metrics.get(key)
    return "n/a" if value is None else with_ci(value, interval(metrics, ci_key))


def model_card(run_dir: Path, loaded: LoadedModel, failures: int = 8) -> str:
    """The model card in Markdown, from the run's files (its run record, test metrics and predictions)."""
    run = RunDir(run_dir)
    metrics = run.read_metrics()
    if metrics is None:
        raise PlantlibError(f"{run.path} has no {METRICS_FILE}: finish (or resume) the run before exporting it")
    classes = ", ".join(md_text(name) for name in loaded.class_names)
    lines = [
        f"# Model card: {md_text(run.name)}",
        *_training_lines(run.read_info(), loaded, classes),
        "",
        f"## Test metrics (n = {metrics.get('n')})",
        f"- Accuracy {_score(metrics, 'accuracy', 'accuracy')}",
        f"- Macro F1 {_score(metrics, 'f1', 'f1_macro')}",
        f"- ROC AUC {metrics['roc_auc']:.3f}" if metrics.get("roc_auc") is not None else "- ROC AUC n/a",
        f"- Calibration: ECE {metrics.get('ece', float('nan')):.3f}, "
        f"log loss {metrics.get('log_loss', float('nan')):.3f}{_temperature_note(loaded)}",
        "",
        "The test split is small: intervals this wide mean differences of a few images are noise.",
        "",
        "## Known failure cases (most confidently wrong test images)",
        *_failure_lines(run, failures),
        "",
        "## Intended use",
        f"- Sorting photos into {classes} like those in the training data, as a research "
        "baseline. Not validated on other cameras, places or seasons: evaluate on your own labelled images "
        "first (`plantlib evaluate RUN --data-dir FOLDER`). Images of anything else still get one of these classes.",
        "",
    ]
    return "\n".join(lines)


def _temperature_note(loaded: LoadedModel) -> str:
    """How the card's probabilities were calibrated, for its calibration line."""
    calibration = loaded.calibration
    if not calibration:
        return " (no temperature scaling)"
    return (
        f" (temperature scaling, T = {loaded.temperature:.3f} fitted on {calibration.get('n')} "
        f"{calibration.get('fitted_on', 'validation')} images)"
    )


def _training_lines(info: dict[str, Any], loaded: LoadedModel, classes: str) -> list[str]:
    """The card's model, data and training-recipe sections."""
    config = loaded.config
    sizes = info.get("sizes", {})
    return [
        "",
        "## Model",
        f"- Backbone `{config.backbone}` ({str(info.get('weights', 'weights unknown')).split(' (')[0]}), "
        f"head `{config.head}`; "
        f"{info.get('parameters', {}).get('total', 0) / 1e6:.2f} M parameters.",
        f"- Classes: {classes}.",
        f"- Input: RGB images, shorter side resized to {resize_side(loaded.image_size)} px, centre crop "
        f"{loaded.image_size} px, uint8 N x 3 x H x W; output: class probabilities.",
        "",
        "## Data and split",
        f"- Data: {md_code(info.get('data_dir', config.data_dir))}; split file {md_code(info.get('split_file', ''))} "
        f"(seed {config.seed}): {sizes.get('train', '?')} train / {sizes.get('val', '?')} validation / "
        f"{sizes.get('test', '?')} test images; near-duplicates kept within one split.",
        "",
        "## Training recipe",
        f"- {info.get('epochs_done', '?')} epochs (best: {info.get('best_epoch', '?')}), optimiser {config.optimizer}, "
        f"learning rate {config.learning_rate:g} (backbone × {config.backbone_lr_factor:g}), schedule "
        f"{config.scheduler}, batch {config.batch_size}, fine-tuning `{config.finetune}` with "
        f"{info.get('frozen_blocks', '?')} leading blocks frozen; {info.get('train_seconds', '?')} s on "
        f"{info.get('device', '?')}. Full config: {CONFIG_FILE}.",
    ]


def _failure_lines(run: RunDir, failures: int) -> list[str]:
    """The `failures` most confidently wrong test images, one line each."""
    wrong = misclassified(run.read_predictions()) if run.predictions_file.is_file() else pd.DataFrame()
    if wrong.empty:
        return ["- none on the test split"]
    return [
        f"- {md_code(row.path)}: labelled {md_text(row.true)}, predicted {md_text(row.predicted)} "
        f"(p={row.confidence:.2f})"
        for row in wrong.head(failures).itertuples()
    ]


def card_html(markdown_text: str, title: str) -> str:
    """A plain, dependency-free HTML rendering of the card (headings, bullets, code spans)."""
    body = []
    for line in markdown_text.splitlines():
        if line.startswith("# "):
            body.append(f"<h1>{_inline_html(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{_inline_html(line[3:])}</h2>")
        elif line.startswith("- "):
            body.append(f"<li>{_inline_html(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{_inline_html(line)}</p>")
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        "<style>body{font-family:sans-serif;max-width:50em;margin:2em auto;line-height:1.4}"
        "code{background:#f3f3f3}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )


_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")


def _inline_html(markdown: str) -> str:
    """One line of the card's Markdown as HTML, read the way CommonMark reads it: code spans (any fence length)
    shown as text, backslash escapes as the character, entities kept; every other character escaped."""
    out, i = [], 0
    while i < len(markdown):
        char = markdown[i]
        if char == "\\" and i + 1 < len(markdown) and markdown[i + 1] in string.punctuation:
            out.append(html.escape(markdown[i + 1]))
            i += 2
        elif char == "&" and (entity := _ENTITY.match(markdown, i)):
            out.append(entity.group())
            i = entity.end()
        elif char == "`":
            fence = re.match("`+", markdown[i:]).group()
            close = re.compile(f"(?<!`){fence}(?!`)").search(markdown, i + len(fence))
            if close is None:
                out.append(fence)
                i += len(fence)
                continue
            code = markdown[i + len(fence) : close.start()]
            if len(code) > 1 and code[0] == code[-1] == " " and code.strip():
                code = code[1:-1]
            out.append(f"<code>{html.escape(code)}</code>")
            i = close.end()
        else:
            out.append(html.escape(char))
            i += 1
    return "".join(out)


def export_run(run: Path, export_format: str = "onnx", out_dir: Path | None = None) -> list[Path]:
    """Export a run's best checkpoint and write its model card; the files written."""
    if export_format not in EXPORT_FORMATS:
        raise PlantlibError(f"format {export_format!r} is not supported; choose one of: {', '.join(EXPORT_FORMATS)}")
    checkpoint = find_checkpoint(Path(run), (BEST_CHECKPOINT,))
    run_dir = checkpoint.parent
    loaded = load_model(checkpoint, device="cpu", engine="torch")
    out = Path(out_dir) if out_dir else run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    model_file = export_onnx(loaded, out / f"{run_dir.name}.onnx")
    card = model_card(run_dir, loaded)
    card_md, card_page = out / "MODEL_CARD.md", out / "MODEL_CARD.html"
    write_text(card_md, card)
    write_text(card_page, card_html(card, f"Model card: {run_dir.name}"))
    return [model_file, card_md, card_page]
