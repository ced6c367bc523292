"""Transforms, the decoded-image cache and seeded loaders."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from plantlib.data import (
    DataWarning,
    DecodedImageCache,
    ImageDataset,
    Normalization,
    eval_transform,
    make_loader,
    train_transform,
)
from plantlib.data import cache as cache_module


def _dataset(root: Path, transform, cache=None) -> ImageDataset:
    files = sorted(root.rglob("*.jpg"))
    labels = [0 if f.parent.name == "cat" else 1 for f in files]
    return ImageDataset(files, labels, transform, cache or DecodedImageCache(max_side=64))


# Written out, not imported: the test must not share a typo with the code.
IMAGENET = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
LITE = Normalization(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


def _plain(root: Path, colour: tuple[int, int, int]) -> ImageDataset:
    """A one-image dataset of a lossless single-colour picture."""
    (root / "cat").mkdir(parents=True)
    Image.new("RGB", (96, 72), colour).save(root / "cat" / "plain.png")
    return ImageDataset([root / "cat" / "plain.png"], [0], eval_transform(32), DecodedImageCache(max_side=64))


@pytest.mark.parametrize("size", [32, 48])
def test_transforms_give_normalised_float_tensors_of_the_asked_size(tmp_path: Path, size: int) -> None:
    colour = (200, 120, 40)
    data = _plain(tmp_path, colour)
    for norm, transform in ((IMAGENET, eval_transform(size)), (LITE, eval_transform(size, LITE))):
        data.transform = transform
        image, label = data[0]
        assert image.shape == (3, size, size) and image.dtype == torch.float32 and label == 0
        by_hand = [(c / 255 - m) / s for c, m, s in zip(colour, norm.mean, norm.std, strict=True)]
        assert torch.allclose(image, torch.tensor(by_hand).view(3, 1, 1).expand(3, size, size), atol=1e-5)


@pytest.mark.parametrize("size", [32, 48])
def test_augmented_tensors_are_normalised_too(tmp_path: Path, size: int) -> None:
    """Every training augmentation keeps a grey picture grey (the affine fill is black), so undoing the
    normalisation by hand must give equal channels holding 8-bit levels in [0, 1]."""
    data = _plain(tmp_path, (128, 128, 128))
    data.transform = train_transform(size)
    mean, std = torch.tensor(IMAGENET.mean).view(3, 1, 1), torch.tensor(IMAGENET.std).view(3, 1, 1)
    for seed in range(5):
        torch.manual_seed(seed)
        image, _ = data[0]
        assert image.shape == (3, size, size) and image.dtype == torch.float32
        levels = (image * std + mean) * 255
        assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.min() > -1e-3 and levels.max() < 255.001
        assert torch.allclose(levels[0], levels[1], atol=1e-3) and torch.allclose(levels[1], levels[2], atol=1e-3)


def test_eval_is_deterministic_and_train_augmentation_follows_the_seed(tiny_dataset: Path) -> None:
    evaluation = _dataset(tiny_dataset, eval_transform(32))
    assert torch.equal(evaluation[3][0], evaluation[3][0])
    training = _dataset(tiny_dataset, train_transform(32))
    torch.manual_seed(0)
    first = training[3][0]
    torch.manual_seed(0)
    again = training[3][0]
    torch.manual_seed(1)
    other = training[3][0]
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_each_image_is_decoded_once_per_process(tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[Path] = []
    real = cache_module.load_rgb
    monkeypatch.setattr(cache_module, "load_rgb", lambda p: decoded.append(p) or real(p))
    cache = DecodedImageCache(max_side=40)
    data = _dataset(tiny_dataset, train_transform(32), cache)
    for _ in range(3):
        for _batch in make_loader(data, batch_size=5, shuffle=True, seed=0):
            pass
    assert len(decoded) == len(data) == 24
    assert min(cache.get(data.paths[0]).shape[1:]) == 40  # stored downsized


def test_prefetch_decodes_only_missing_images_in_threads_and_reports_bad_files(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from plantlib.data.images import ImageDecodeError

    decoded: list[Path] = []
    real = cache_module.load_rgb
    monkeypatch.setattr(cache_module, "load_rgb", lambda p: decoded.append(p) or real(p))
    files = sorted(tiny_dataset.rglob("*.jpg"))[:6]
    cache = DecodedImageCache(max_side=40)
    cache.get(files[0])
    with ThreadPoolExecutor(2) as pool:
        cache.prefetch([*files, files[1]], pool)  # one already cached, one listed twice
        assert sorted(decoded) == sorted(files) and len(cache) == 6
        assert all(torch.equal(cache.get(f), DecodedImageCache(max_side=40).get(f)) for f in files)
        assert len(decoded) == 6 + 6  # the fresh caches above decoded; the shared one did not again
        broken = tmp_path / "broken.jpg"
        broken.write_bytes(b"not a jpeg")
        with pytest.raises(ImageDecodeError):
            cache.prefetch([files[0], broken], pool)
    assert broken not in cache and files[0] in cache


def test_loader_order_follows_the_seed(tiny_dataset: Path) -> None:
    data = _dataset(tiny_dataset, eval_transform(32))

    def order(seed: int) -> list[int]:
        return [int(y) for _, labels in make_loader(data, 4, shuffle=True, seed=seed) for y in labels]

    assert order(3) == order(3)
    assert [order(s) for s in range(4)] != [order(3)] * 4


def test_images_past_the_memory_budget_spill_to_disk_and_read_back_equal(tiny_dataset: Path, tmp_path: Path) -> None:
    files = sorted(tiny_dataset.rglob("*.jpg"))
    in_memory = DecodedImageCache(max_side=40)
    one_image_mb = in_memory.get(files[0]).numel() / 2**20
    spilling = DecodedImageCache(max_side=40, memory_budget_mb=2.5 * one_image_mb, spill_dir=tmp_path / "spill")
    with pytest.warns(DataWarning, match="exceed the cache's memory budget"):
        for file in files:
            spilling.get(file)
    stats = spilling.stats()
    assert stats["images"] == len(files) and stats["in_memory"] == 2 and stats["on_disk"] == len(files) - 2
    assert spilling.nbytes() <= spilling.memory_budget_bytes and spilling.disk_bytes() > 0
    for file in files:
        assert torch.equal(spilling.get(file), in_memory.get(file))
    assert [p.name for p in (tmp_path / "spill").iterdir()] == []  # the spill file is unlinked from the start
    spilling.close()


def test_a_forked_worker_never_appends_to_the_parents_spill_file(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = sorted(tiny_dataset.rglob("*.jpg"))
    cache = DecodedImageCache(max_side=40, memory_budget_mb=0, spill_dir=tmp_path)
    with pytest.warns(DataWarning):
        cache.get(files[0])
    monkeypatch.setattr(cache_module.os, "getpid", lambda: -1)  # as seen from another process
    size = cache.disk_bytes()
    image = cache.get(files[1])
    assert image.shape[0] == 3 and cache.disk_bytes() == size and cache.uncached_decodes == 1
    assert torch.equal(cache.get(files[0]), DecodedImageCache(max_side=40).get(files[0]))
