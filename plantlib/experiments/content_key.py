"""Content keys: a finished cross-validation is found again instead of trained again when the recipe, the data
and the plantlib version that made it are the same.

The key hashes the recipe fields of the config (`RunConfig.recipe()`, data locations left out: the data's content
is hashed instead), every image's bytes with its path, label, group and split, the CV settings (folds, seeds, …)
and `plantlib.__version__`. Execution fields (device, workers, memory, output folder, tracking) do not enter it:
they change how a result is computed, not what it is. A code change that alters results without a new version is
not seen: pass `rerun=True` (`--rerun`) to train again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plantlib import __version__
from plantlib.config import RunConfig
from plantlib.data import PreparedData
from plantlib.data.names import file_in
from plantlib.runs import is_cv_dir, read_cv_info

# Where the data lives, not what it is: the images' content (and the label overrides' content) is hashed instead.
LOCATION_FIELDS = ("data_dir", "split_file", "new_split", "label_overrides")


def data_fingerprint(data: PreparedData) -> str:
    """A hash of every split row (path, label, group, split) and the bytes of its image, and of the label
    overrides file when one was applied (so a result with overrides is never reused for one without)."""
    digest = hashlib.sha256()
    if data.overrides is not None:
        digest.update(f"label overrides {data.overrides.sha256}\n".encode())
    for row in data.split.sort_values("path").itertuples(index=False):
        digest.update(f"{row.path}\t{row.label}\t{row.group}\t{row.split}\n".encode())
        try:
            digest.update(hashlib.sha256(file_in(data.data_dir, row.path).read_bytes()).digest())
        except OSError:
            digest.update(b"unreadable")
    return digest.hexdigest()


def content_key(config: RunConfig, data: PreparedData, settings: Mapping[str, Any]) -> str:
    """The key of a result of `config` on `data` with `settings` (e.g. folds, seeds) under this plantlib version."""
    recipe = {name: value for name, value in config.recipe().items() if name not in LOCATION_FIELDS}
    payload = {"recipe": recipe, "data": data_fingerprint(data), "settings": dict(settings), "plantlib": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def find_finished_cv(parent: Path, key: str) -> Path | None:
    """The newest finished cross-validation directory under `parent` whose cv.json holds `key`, or None."""
    if not Path(parent).is_dir():
        return None
    for candidate in sorted(Path(parent).iterdir(), reverse=True):
        if not is_cv_dir(candidate):
            continue
        try:
            info = read_cv_info(candidate)
        except (OSError, ValueError):
            continue
        if info.get("status") == "finished" and info.get("content_key") == key:
            return candidate
    return None
