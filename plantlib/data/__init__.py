"""The data layer: fetch, scan, de-duplicate, split and load images of a folder-per-class dataset."""

from __future__ import annotations

from plantlib.data.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DecodedImageCache,
    ImageDataset,
    Normalization,
    eval_transform,
    make_loader,
    train_transform,
)
from plantlib.data.duplicates import DuplicateReport, find_duplicates
from plantlib.data.fetch import FetchReport, dataset_is_complete, fetch_dataset
from plantlib.data.images import ImageDecodeError, load_rgb
from plantlib.data.prepare import PreparedData, prepare_data
from plantlib.data.scan import DataWarning, ScanResult, scan_dataset
from plantlib.data.split import load_split, make_split, split_counts

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataWarning",
    "DecodedImageCache",
    "DuplicateReport",
    "FetchReport",
    "ImageDataset",
    "ImageDecodeError",
    "Normalization",
    "PreparedData",
    "ScanResult",
    "dataset_is_complete",
    "eval_transform",
    "fetch_dataset",
    "find_duplicates",
    "load_rgb",
    "load_split",
    "make_loader",
    "make_split",
    "prepare_data",
    "scan_dataset",
    "split_counts",
    "train_transform",
]
