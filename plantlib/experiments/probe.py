"""Linear probe: the frozen pretrained backbone's embeddings and a logistic regression, cross-validated on the folds
fine-tuning uses, so "how much does fine-tuning add?" is answered under the verdict rule.

Each pool image is embedded once (the backbone's pooled features of its centre crop, no augmentation) and the
embeddings are kept in the probe's directory. Each fold then fits a standardised, L2-regularised logistic
regression on every image it does not hold out; C is chosen by an inner group-respecting CV on those images alone,
so the held-out fold is never seen (fine-tuning uses the same images for training and early stopping). The probe's
directory is a cross-validation directory like any other (cv.json, folds.csv, oof.csv): `plantlib compare` and the
content-key reuse treat it as one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from plantlib.config import RunConfig
from plantlib.data import PreparedData, prepare_data
from plantlib.data.cache import DecodedImageCache
from plantlib.data.dataset import eval_transform
from plantlib.data.names import file_in
from plantlib.evaluation.metrics import predictions_frame
from plantlib.experiments.cv import (
    CrossValidation,
    assign_folds,
    cv_parent,
    cv_pool,
    cv_settings,
    finished_twin,
    fold_spread,
    headline,
    pooled_metrics,
    repeat_seeds,
    summarise,
)
from plantlib.io import atomic_path
from plantlib.models.backbones import build_model, normalization_for
from plantlib.runs import EMBEDDINGS_FILE, CvDir, new_unique_dir
from plantlib.training.build import build_image_cache

PROBE_KIND = "linear_probe"
# Inverse regularisation strengths the inner CV chooses from (log-spaced; features are standardised first).
PROBE_CS = tuple(float(c) for c in np.logspace(-4, 2, 13))
INNER_FOLDS = 5


def embed_images(
    config: RunConfig, files: Sequence[Path], cache: DecodedImageCache, batch_size: int = 32
) -> np.ndarray:
    """(N, features) pooled features of the pretrained `config.backbone` for each file's centre crop."""
    torch.manual_seed(config.seed)  # only a randomly initialised backbone (pretrained=False) draws from it
    model = build_model(config.backbone, 2, pretrained=config.pretrained, head="linear", fuse_bn=True).eval()
    transform = eval_transform(config.image_size, normalization_for(config.backbone))
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(files), batch_size):
            batch = torch.stack([transform(cache.get(Path(f))) for f in files[start : start + batch_size]])
            chunks.append(model.features(batch.contiguous(memory_format=torch.channels_last)).float().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


def fit_probe(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int) -> Pipeline:
    """A standardised logistic regression whose C an inner, group-respecting CV on these images chose."""
    inner_folds = max(2, min(INNER_FOLDS, int(np.bincount(labels).min())))
    splitter = StratifiedGroupKFold(n_splits=inner_folds, shuffle=True, random_state=seed)
    inner = list(splitter.split(features, labels, groups))
    probe = LogisticRegressionCV(
        Cs=list(PROBE_CS),
        l1_ratios=(0.0,),  # plain L2
        cv=inner,
        scoring="neg_log_loss",
        max_iter=5000,
        use_legacy_attributes=False,
    )
    return make_pipeline(StandardScaler(), probe).fit(features, labels)


def new_probe_dir(config: RunConfig, folds: int) -> Path:
    return new_unique_dir(cv_parent(config), f"{time.strftime('%Y%m%d-%H%M%S')}-{config.backbone}-probe-{folds}fold")


def probe_cross_validate(
    config: RunConfig,
    folds: int = 5,
    repeats: int = 1,
    include_test: bool = False,
    seeds: Sequence[int] | None = None,
    show_progress: bool = False,
    rerun: bool = False,
) -> CrossValidation:
    """`config.backbone`'s linear probe on the folds `cross_validate(config, folds, …)` draws, in seconds.

    A finished probe with the same content key (recipe, data, settings, plantlib version) is reused unless `rerun`.
    """
    seeds = repeat_seeds(config.seed, repeats, seeds)
    data = prepare_data(config, show_progress=show_progress)
    assigned = assign_folds(cv_pool(data, include_test), folds, len(seeds), config.effective_split_seed)
    settings = cv_settings(config, data, folds, seeds, include_test, len(assigned), kind=PROBE_KIND)
    twin = None if rerun else finished_twin(config, settings["content_key"])
    if twin is not None:
        return _read_finished(CvDir(twin), data.classes)
    cv = CvDir(new_probe_dir(config, folds))
    cv.write_info({"status": "running", "config": config.to_dict(), **settings})
    cv.write_folds(assigned)
    started = time.perf_counter()
    features = _pool_embeddings(config, data, assigned, cv)
    embed_seconds = time.perf_counter() - started
    rows, frames = [], []
    for repeat, seed in enumerate(seeds):
        for fold in range(folds):
            frame, row = _probe_fold(features, assigned, data.classes, (repeat, fold), seed)
            frames.append(frame)
            rows.append(row)
    result = summarise(cv, rows, data.classes, frames)
    timing = {"embed_seconds": round(embed_seconds, 2), "fit_seconds_per_fold": _mean(rows, "seconds")}
    summary = {"status": "finished", "config": config.to_dict(), **settings, "pooled": headline(result.metrics)}
    cv.write_info(summary | {"per_fold": fold_spread(result.folds), "probe": timing})
    return result


def _pool_embeddings(config: RunConfig, data: PreparedData, assigned: pd.DataFrame, cv: CvDir) -> np.ndarray:
    """The pool's embeddings in `assigned` order, computed once and saved beside the probe's predictions."""
    files = [file_in(data.data_dir, path) for path in assigned["path"]]
    features = embed_images(config, files, build_image_cache(config))
    with atomic_path(cv.path / EMBEDDINGS_FILE) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, paths=assigned["path"].to_numpy(dtype=str), features=features)
    return features


def _probe_fold(
    features: np.ndarray, assigned: pd.DataFrame, classes: list[str], where: tuple[int, int], seed: int
) -> tuple[pd.DataFrame, dict]:
    """Fit on every image fold `where` = (repeat, fold) does not hold out; its held-out predictions and scores."""
    repeat, fold = where
    labels = assigned["label"].map({name: index for index, name in enumerate(classes)}).to_numpy()
    held_out = (assigned[f"fold_r{repeat}"] == fold).to_numpy()
    started = time.perf_counter()
    probe = fit_probe(features[~held_out], labels[~held_out], assigned["group"].to_numpy()[~held_out], seed)
    seconds = time.perf_counter() - started
    probs = np.zeros((int(held_out.sum()), len(classes)))
    probs[:, probe.classes_] = probe.predict_proba(features[held_out])  # a class absent from training stays at 0
    frame = predictions_frame(assigned["path"][held_out].tolist(), labels[held_out], probs, classes)
    predicted = probs.argmax(axis=1)
    row = {
        "accuracy": float(accuracy_score(labels[held_out], predicted)),
        "f1": float(f1_score(labels[held_out], predicted, average="macro")),
        "n": int(held_out.sum()),
        "run_dir": "",
        "repeat": repeat,
        "fold": fold,
        "seconds": seconds,
    }
    return frame, row


def _read_finished(cv: CvDir, classes: list[str]) -> CrossValidation:
    """A finished probe's result from its files (nothing is embedded or fitted again)."""
    oof = cv.read_oof()
    rows = [
        {
            "accuracy": float((part["true"] == part["predicted"]).mean()),
            "f1": float(f1_score(part["true"], part["predicted"], average="macro", labels=classes)),
            "n": len(part),
            "run_dir": "",
            "repeat": repeat,
            "fold": fold,
        }
        for (repeat, fold), part in oof.groupby(["repeat", "fold"])
    ]
    return CrossValidation(cv.path, pooled_metrics(oof, classes), pd.DataFrame(rows), oof)


def _mean(rows: list[dict], key: str) -> float:
    return round(float(np.mean([row[key] for row in rows])), 3) if rows else 0.0
