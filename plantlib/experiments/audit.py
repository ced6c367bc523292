"""Label and data audit of a cross-validation: which labels look wrong, which images are odd or near-copies.

Label issues come from confident learning (cleanlab) on the out-of-fold probabilities: every pool image was
predicted by a model that never trained on it, which is what confident learning needs. With repeats, an image's
probabilities are averaged over them. The images outside the pool (the test split) were held out by every fold
model, so they are audited too, with the mean of the fold models' probabilities (`fold` = -1): the audit covers
every usable image of the folder. `cleanlab.filter.find_label_issues` (its default, prune by noise rate)
decides which images are suspected; `cleanlab.rank.get_label_quality_scores` (self-confidence: the out-of-fold
probability of the given label) ranks them, lowest first.

Outliers and near-duplicates are found in one embedding space for all images: the pooled features of the
pretrained backbone of the cross-validation's recipe (`experiments.probe.embed_images`). The fold models each
have a space of their own, so distances between images embedded by two of them would mean nothing; the pretrained
network also trained on none of these images. Outlier scores are cleanlab's `OutOfDistribution` (k nearest
neighbours, 0 = most atypical); near-duplicate pairs are those whose cosine distance is below 0.13 times the
median nearest-neighbour distance (cleanlab Datalab's rule, computed here without Datalab). The pixel-hash
duplicates the data layer finds (`data.duplicates`) are marked in the pairs, not found again.

The audit is saved in the cross-validation directory (`runs.AUDIT_FILE` and siblings) and reused while the
out-of-fold file is the one it was computed from. Nothing here moves, renames or deletes an image: acting on the
audit means writing rows into the label overrides file (`data.overrides`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plantlib.config import RunConfig
from plantlib.data.names import file_in
from plantlib.data.overrides import EXCLUDE, OVERRIDES_FILE, default_overrides_file
from plantlib.data.split import EXCLUDED
from plantlib.errors import PlantlibError
from plantlib.evaluation.metrics import class_columns, proportion_ci
from plantlib.io import atomic_write, write_json
from plantlib.runs import CvDir, is_cv_dir

AUDIT_VERSION = 2  # a saved audit of another version is computed again
OUTSIDE_POOL = -1  # the `fold` of an image outside the pool (the test split): every fold model held it out
NEAR_DUPLICATE_FACTOR = 0.13  # a pair is near-duplicate below this share of the median nearest-neighbour distance
OUTLIER_NEIGHBOURS = 10  # cleanlab's default k for OutOfDistribution with features


@dataclass
class Audit:
    """A cross-validation's audit: one ranked row per pool image, the near-duplicate pairs, and the facts."""

    cv_dir: Path
    data_dir: Path
    classes: list[str]
    images: pd.DataFrame  # rank, path, given, suggested, label_quality, is_issue, p_given, fold, outlier_score...
    pairs: pd.DataFrame  # path_a, path_b, cosine_distance, label_a, label_b, same_hash_group, same_fold
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def issues(self) -> pd.DataFrame:
        """The suspected label issues, most suspicious first."""
        return self.images[self.images["is_issue"]].reset_index(drop=True)

    def top(self, n: int = 10) -> pd.DataFrame:
        """The `n` images with the lowest label quality (suspected or not), most suspicious first."""
        return self.images.head(n).reset_index(drop=True)

    def outliers(self, n: int = 8) -> pd.DataFrame:
        """The `n` most atypical images in the embedding space (lowest outlier score)."""
        if "outlier_score" not in self.images or self.images["outlier_score"].isna().all():
            return self.images.iloc[0:0]
        return self.images.sort_values("outlier_score", kind="stable").head(n).reset_index(drop=True)

    def files(self) -> list[Path]:
        cv = CvDir(self.cv_dir)
        return [cv.audit_file, cv.audit_pairs_file, cv.audit_info_file]


# -- label issues ------------------------------------------------------------------------------------------
def rank_label_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label quality per image, suspected issue per image) from given labels (class indices) and out-of-sample
    probabilities (N, C): cleanlab's self-confidence score and its default confident-learning filter."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    quality = get_label_quality_scores(labels, probs)
    is_issue = find_label_issues(labels, probs)
    return np.asarray(quality, dtype=float), np.asarray(is_issue, dtype=bool)


def out_of_fold_table(oof: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per pool image: path, given label, its fold (first repeat) and `p_<class>` averaged over repeats."""
    classes = class_columns(oof)
    columns = [f"p_{c}" for c in classes]
    probs = oof.groupby("path", sort=True)[columns].mean()
    first = oof.sort_values("repeat", kind="stable") if "repeat" in oof else oof
    facts = first.groupby("path", sort=True).agg(given=("true", "first"), fold=("fold", "first"))
    repeats = oof.groupby("path", sort=True).size().rename("repeats")
    return facts.join(repeats).join(probs).reset_index(), classes


def label_issue_table(table: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """`out_of_fold_table` ranked by label quality (lowest first) with the suggested label and the verdict."""
    probs = table[[f"p_{c}" for c in classes]].to_numpy(dtype=float)
    probs = probs / probs.sum(axis=1, keepdims=True)
    index = {name: i for i, name in enumerate(classes)}
    labels = table["given"].map(index).to_numpy()
    quality, is_issue = rank_label_issues(labels, probs)
    ranked = table.assign(
        suggested=[classes[i] for i in probs.argmax(axis=1)],
        label_quality=quality,
        p_given=probs[np.arange(len(labels)), labels],
        is_issue=is_issue,
    )
    ranked = ranked.sort_values(["label_quality", "path"], kind="stable").reset_index(drop=True)
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    return ranked


# -- embeddings: outliers and near-duplicates ------------------------------------------------------------
def outlier_scores(features: np.ndarray) -> np.ndarray:
    """cleanlab's out-of-distribution score of each embedding among the others: in (0, 1], low = atypical."""
    from cleanlab.outlier import OutOfDistribution

    k = max(1, min(OUTLIER_NEIGHBOURS, len(features) - 1))
    scorer = OutOfDistribution(params={"k": k})
    return np.asarray(scorer.fit_score(features=np.asarray(features, dtype=float), verbose=False), dtype=float)


def near_duplicate_pairs(
    features: np.ndarray, paths: list[str], factor: float = NEAR_DUPLICATE_FACTOR
) -> tuple[pd.DataFrame, float]:
    """Pairs closer (cosine distance) than `factor` x the median nearest-neighbour distance, and that radius."""
    from sklearn.neighbors import NearestNeighbors

    columns = ["path_a", "path_b", "cosine_distance"]
    if len(features) < 2:
        return pd.DataFrame(columns=columns), 0.0
    model = NearestNeighbors(metric="cosine").fit(features)
    nearest, _ = model.kneighbors(n_neighbors=1)
    radius = float(factor * np.median(nearest[:, 0]))
    distances, neighbours = model.radius_neighbors(radius=radius, sort_results=True)
    rows = [
        (paths[i], paths[j], float(d))
        for i, (row_d, row_j) in enumerate(zip(distances, neighbours, strict=True))
        for d, j in zip(row_d, row_j, strict=True)
        if i < j
    ]
    frame = pd.DataFrame(rows, columns=columns).sort_values(["cosine_distance", "path_a"], kind="stable")
    return frame.reset_index(drop=True), radius


def describe_pairs(pairs: pd.DataFrame, facts: pd.DataFrame) -> pd.DataFrame:
    """Each pair with both labels, whether the pixel hashes already grouped it, and whether one fold (or the test
    split) holds both: a pair across them lets a model be tested on a near-copy of a training image.

    `facts` is indexed by path with columns label, group (the data layer's duplicate group) and fold."""
    out = pairs.copy()
    for side in ("a", "b"):
        out[f"label_{side}"] = out[f"path_{side}"].map(facts["label"])
    for name, column in (("same_hash_group", "group"), ("same_fold", "fold")):
        out[name] = out["path_a"].map(facts[column]).to_numpy() == out["path_b"].map(facts[column]).to_numpy()
    return out


def outside_pool_table(cv: CvDir, data_dir: Path) -> pd.DataFrame:
    """The images the cross-validation kept out of its pool (the test split; listed as excluded in a fold's split
    file), each with the mean probabilities of all fold models, none of which trained on it. Empty when there are
    none, or no fold models (a linear probe)."""
    from plantlib.inference.ensemble import load_predictor

    split = _fold_split(cv)
    outside = split[split["split"] == EXCLUDED] if split is not None else split
    if outside is None or outside.empty:
        return pd.DataFrame()
    predictor = load_predictor([cv.path], calibrated=False)  # the out-of-fold predictions were not calibrated
    probs = predictor.probabilities([file_in(data_dir, path) for path in outside["path"]])
    frame = pd.DataFrame({"path": outside["path"].to_numpy(), "given": outside["label"].to_numpy()})
    frame = frame.assign(fold=OUTSIDE_POOL, repeats=len(cv.fold_runs()))
    for index, name in enumerate(predictor.class_names):
        frame[f"p_{name}"] = probs[:, index]
    return frame


def _fold_split(cv: CvDir) -> pd.DataFrame | None:
    """The first fold's split file (every image of the folder with its group), or None without fold runs."""
    from plantlib.data.split import load_split

    split_file = cv.fold(0, 0).split_file
    return load_split(split_file) if split_file.is_file() else None


# -- the audit of a cross-validation ---------------------------------------------------------------------
def cv_data_dir(config: RunConfig) -> Path:
    """The data folder a cross-validation's images live in (fetched first for the built-in data)."""
    from plantlib.data.prepare import resolve_data_dir

    return resolve_data_dir(config)


def audit_cv(cv_dir: Path, embeddings: bool = True, rerun: bool = False) -> Audit:
    """The audit of a finished cross-validation, computed and saved in it, or read back when it is up to date.

    `embeddings=False` leaves out outliers and near-duplicates (no network is run: seconds instead of about a
    second per ten images on a CPU).
    """
    cv = _finished_cv(Path(cv_dir))
    source = _oof_digest(cv)
    if not rerun:
        saved = read_audit(cv.path)
        wanted = {"version": AUDIT_VERSION, "oof_sha256": source}
        current = saved is not None and all(saved.info.get(k) == v for k, v in wanted.items())
        if current and (saved.info.get("embeddings") or not embeddings):
            return saved
    config = RunConfig.from_dict(cv.read_info()["config"])
    data_dir = cv_data_dir(config)
    table, classes = out_of_fold_table(cv.read_oof())
    table = pd.concat([table, outside_pool_table(cv, data_dir)], ignore_index=True)
    images = label_issue_table(table, classes)
    pairs = pd.DataFrame(columns=["path_a", "path_b", "cosine_distance"])
    radius = None
    if embeddings:
        images, pairs, radius = _embedding_findings(config, data_dir, images, cv)
    info = _audit_info(images, pairs, source, embeddings, radius, config)
    audit = Audit(cv.path, data_dir, classes, images, pairs, info)
    _save(audit)
    return audit


def _finished_cv(path: Path) -> CvDir:
    if not is_cv_dir(path):
        raise PlantlibError(f"{path} is not a cross-validation directory (no cv.json); pass one plantlib cv wrote")
    cv = CvDir(path)
    if cv.read_info().get("status") != "finished" or not cv.oof_file.is_file():
        raise PlantlibError(f"{path} is not a finished cross-validation; finish it with plantlib cv --resume {path}")
    return cv


def _oof_digest(cv: CvDir) -> str:
    return hashlib.sha256(cv.oof_file.read_bytes()).hexdigest()


def _embedding_findings(
    config: RunConfig, data_dir: Path, images: pd.DataFrame, cv: CvDir
) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """Outlier scores and ranks added to `images`, and the described near-duplicate pairs with their radius."""
    from plantlib.experiments.probe import embed_images
    from plantlib.training.build import build_image_cache

    paths = images["path"].tolist()
    features = embed_images(config, [file_in(data_dir, p) for p in paths], build_image_cache(config))
    scores = outlier_scores(features)
    images = images.assign(outlier_score=scores, outlier_rank=pd.Series(scores).rank(method="first").astype(int))
    pairs, radius = near_duplicate_pairs(features, paths)
    return images, describe_pairs(pairs, _image_facts(images, cv)), radius


def _image_facts(images: pd.DataFrame, cv: CvDir) -> pd.DataFrame:
    """Per path: label, the data layer's duplicate group, and the fold that held it out (-1: the test split)."""
    split = _fold_split(cv)
    groups = split if split is not None else cv.read_folds()
    facts = images.set_index("path")[["given", "fold"]].rename(columns={"given": "label"})
    return facts.join(groups.set_index("path")["group"])


def _audit_info(
    images: pd.DataFrame,
    pairs: pd.DataFrame,
    source: str,
    embeddings: bool,
    radius: float | None,
    config: RunConfig,
) -> dict[str, Any]:
    n, flagged = len(images), int(images["is_issue"].sum())
    outside = int((images["fold"] == OUTSIDE_POOL).sum())
    new_pairs = int((~pairs["same_hash_group"].astype(bool)).sum()) if len(pairs) else 0
    return {
        "version": AUDIT_VERSION,
        "oof_sha256": source,
        "n": n,
        "n_pool": n - outside,
        "n_outside_pool": outside,
        "label_issues": flagged,
        "label_issue_share": flagged / n if n else 0.0,
        "label_issue_share_ci95": list(proportion_ci(flagged, n)) if n else None,
        "method": "cleanlab find_label_issues (prune_by_noise_rate) + get_label_quality_scores (self_confidence)",
        "embeddings": embeddings,
        "embedding_model": f"{config.backbone} (pretrained), pooled features at {config.image_size} px"
        if embeddings
        else None,
        "near_duplicate_radius": radius,
        "near_duplicate_pairs": len(pairs),
        "near_duplicate_pairs_not_hash_grouped": new_pairs,
    }


def _save(audit: Audit) -> None:
    cv = CvDir(audit.cv_dir)
    for path, frame in ((cv.audit_file, audit.images), (cv.audit_pairs_file, audit.pairs)):
        atomic_write(path, lambda handle, frame=frame: frame.to_csv(handle, index=False, lineterminator="\n"))
    write_json(cv.audit_info_file, audit.info | {"classes": audit.classes, "data_dir": str(audit.data_dir)})


def read_audit(cv_dir: Path) -> Audit | None:
    """The audit saved in `cv_dir`, or None when there is none (or it cannot be read)."""
    from plantlib.io import read_json

    cv = CvDir(Path(cv_dir))
    if not (cv.audit_file.is_file() and cv.audit_pairs_file.is_file() and cv.audit_info_file.is_file()):
        return None
    try:
        info = read_json(cv.audit_info_file)
        images = pd.read_csv(cv.audit_file, dtype={"path": str, "given": str, "suggested": str}, keep_default_na=False)
        pairs = pd.read_csv(cv.audit_pairs_file, dtype={"path_a": str, "path_b": str}, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    images["is_issue"] = images["is_issue"].astype(str).str.lower().eq("true")
    classes, data_dir = list(info.pop("classes", [])), Path(info.pop("data_dir", "."))
    return Audit(cv.path, data_dir, classes, images, pairs, info)


# -- reading the audit --------------------------------------------------------------------------------------
def issues_table(audit: Audit, n: int = 10) -> pd.DataFrame:
    """The top `n` images for people: rank, path, given and suggested label, score, verdict."""
    columns = ["rank", "path", "given", "suggested", "label_quality", "is_issue"]
    return audit.top(n)[columns].rename(columns={"is_issue": "suspected"})


def summary_line(audit: Audit) -> str:
    """One line: how many label issues are suspected among how many images, with a 95% interval."""
    info = audit.info
    low, high = info.get("label_issue_share_ci95") or (float("nan"), float("nan"))
    return (
        f"{info['label_issues']} suspected label issue(s) among n={info['n']} out-of-sample images "
        f"({info['label_issue_share']:.1%}, 95% CI {low:.1%}-{high:.1%})"
    )


def outlier_tiles(audit: Audit, n: int = 8) -> tuple[list[Path], list[str]]:
    """The `n` most atypical images' files and titles (name, given label, outlier score) for an image grid."""
    rows = audit.outliers(n)
    files = [file_in(audit.data_dir, path) for path in rows["path"]]
    titles = [
        f"{Path(path).name} ({label}) {score:.2f}"
        for path, label, score in zip(rows["path"], rows["given"], rows["outlier_score"], strict=True)
    ]
    return files, titles


def suggested_overrides(audit: Audit, n: int | None = None) -> pd.DataFrame:
    """Rows for the label overrides file (path, label = the suggestion) for the suspected issues, to review by
    eye before copying: the audit suggests, a person decides (`exclude` drops an image instead)."""
    rows = audit.issues.head(n) if n is not None else audit.issues
    return pd.DataFrame(
        {
            "path": rows["path"],
            "label": rows["suggested"],
            "given": rows["given"],
            "label_quality": rows["label_quality"].round(4),
        }
    )


def how_to_act(audit: Audit) -> str:
    """Where the fixes go and what they do, for the CLI and the notebook."""
    target = default_overrides_file(audit.data_dir)
    return (
        f"To act: look at the images, then add rows 'path,label' to {target} (label a class, or {EXCLUDE} to leave "
        f"the image out). scan, train, cv and the notebooks apply {OVERRIDES_FILE} from then on, with a split of "
        "their own; the images themselves are never moved or deleted."
    )


def detection_scores(flagged: Iterable[str], planted: Iterable[str], n: int) -> dict[str, Any]:
    """Precision and recall of `flagged` paths against `planted` ones among `n` images, with exact 95% CIs, and
    the precision a random pick of the same size would expect (the planted share)."""
    flagged, planted = set(flagged), set(planted)
    hits = len(flagged & planted)
    scores: dict[str, Any] = {"n": n, "planted": len(planted), "flagged": len(flagged), "hits": hits}
    scores["precision"] = hits / len(flagged) if flagged else None
    scores["precision_ci95"] = list(proportion_ci(hits, len(flagged))) if flagged else None
    scores["recall"] = hits / len(planted) if planted else None
    scores["recall_ci95"] = list(proportion_ci(hits, len(planted))) if planted else None
    scores["chance_precision"] = len(planted) / n if n else None
    return scores


def explain_top(audit: Audit, n: int = 8, method: str = "gradcam") -> list[tuple[Any, Any, str]]:
    """(crop, heat-map overlay, caption) for the top `n` images, each explained by the fold model that held it
    out (first repeat; the first fold's for a test-split image): where it found the evidence for its prediction."""
    from plantlib.inference.explain import explain_files, overlay
    from plantlib.inference.predictor import load_model

    top = audit.top(n)
    cv = CvDir(audit.cv_dir)
    items: dict[str, tuple[Any, Any, str]] = {}
    for fold, rows in top.groupby(top["fold"].clip(lower=0), sort=True):
        loaded = load_model(cv.fold(0, int(fold)).best_checkpoint, engine="torch")
        files = [file_in(audit.data_dir, p) for p in rows["path"]]
        for row, explained in zip(rows.itertuples(), explain_files(loaded, files, method), strict=True):
            caption = (
                f"#{row.rank} {Path(row.path).name}: given {row.given}, suggested {row.suggested} "
                f"(quality {row.label_quality:.2f})"
            )
            items[row.path] = (explained.crop, overlay(explained), caption)
    return [items[path] for path in top["path"]]
