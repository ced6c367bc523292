"""Exact duplicates (same bytes) and near-duplicates (close perceptual hashes) among usable images.

Near-duplicate groups are what the splitter keeps together, so no test image has a copy in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import DisjointSet


@dataclass
class DuplicateReport:
    exact_groups: list[list[str]]  # paths sharing one SHA-256, groups of 2 or more
    near_groups: list[list[str]]  # connected components of close perceptual hashes, 2 or more
    group_of: dict[str, int]  # every usable path -> its near-duplicate group id (singletons included)
    max_distance: int

    @property
    def exact_duplicate_files(self) -> int:
        """Files that are redundant copies (group size minus one, summed)."""
        return sum(len(g) - 1 for g in self.exact_groups)

    @property
    def near_duplicate_files(self) -> int:
        """Files in near-duplicate groups beyond the first of each group."""
        return sum(len(g) - 1 for g in self.near_groups)

    def summary(self) -> str:
        return (
            f"{len(self.exact_groups)} exact-duplicate groups ({self.exact_duplicate_files} redundant files), "
            f"{len(self.near_groups)} near-duplicate groups ({self.near_duplicate_files} redundant files, "
            f"perceptual-hash distance <= {self.max_distance})"
        )


def _hash_bits(hex_hashes: list[str]) -> np.ndarray:
    """64-bit perceptual hashes as a (n, 64) boolean matrix."""
    as_ints = np.array([int(h, 16) for h in hex_hashes], dtype=np.uint64)
    shifts = np.arange(63, -1, -1, dtype=np.uint64)
    return ((as_ints[:, None] >> shifts) & np.uint64(1)).astype(bool)


def find_duplicates(images: pd.DataFrame, max_distance: int = 6, block: int = 2048) -> DuplicateReport:
    """Group `images` (columns path, sha256, phash) by identical bytes and by perceptual-hash distance."""
    paths = images["path"].tolist()
    groups = DisjointSet(paths)
    exact_groups = [sorted(g["path"].tolist()) for _, g in images.groupby("sha256", sort=True) if len(g) > 1]
    for group in exact_groups:
        for other in group[1:]:
            groups.merge(group[0], other)

    if len(paths) > 1:
        bits = _hash_bits(images["phash"].tolist()).astype(np.uint8)
        for start in range(0, len(paths), block):
            chunk = bits[start : start + block]
            # Hamming distance = bits set in one but not the other, counted with two matrix products.
            distance = chunk @ (1 - bits).T + (1 - chunk) @ bits.T
            rows, cols = np.nonzero(distance <= max_distance)
            for row, col in zip(rows + start, cols, strict=True):
                if row < col:
                    groups.merge(paths[row], paths[col])

    components = [sorted(c) for c in groups.subsets()]
    components.sort(key=lambda c: c[0])
    group_of = {path: index for index, component in enumerate(components) for path in component}
    near_groups = [c for c in components if len(c) > 1]
    return DuplicateReport(exact_groups, near_groups, group_of, max_distance)
