"""Data sets for odn, held in memory as uint8 tensors (N, C, H, W) with int64 labels.

One function per data set returns a `DataSet`: the train / val / test splits plus the facts a
model needs (classes, channels, image size, mean/std). Normalisation and batching happen later,
on tensors, on the training device (odn.batches): per-sample PIL transforms are far too slow on
two CPU cores (DESIGN.md §4).

Where files come from: torchvision's dataset classes read an existing torchvision-layout folder
under the data root (`--data-dir`, else $ODN_DATA, else ./data) and download when online. The
offline default `digits` ships inside scikit-learn, so it works on any machine after install.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor


class DataUnavailable(RuntimeError):
    """A data set could not be found on disk nor downloaded; the message says how to fix it."""


@dataclass
class DataSet:
    name: str
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] = field(default_factory=list)


LOADERS: dict[str, Callable[[Path], DataSet]] = {}


def loader(name: str):
    def decorate(fn):
        LOADERS[name] = fn
        return fn
    return decorate


def default_root() -> Path:
    return Path(os.environ.get("ODN_DATA") or "data")


def load(name: str, root: str | Path | None = None) -> DataSet:
    """Load a data set by name from `root` (default: $ODN_DATA, else ./data)."""
    if name not in LOADERS:
        raise LookupError(f"unknown data set {name!r}; known: {', '.join(sorted(LOADERS))}")
    return LOADERS[name](Path(root) if root else default_root())


def as_nchw(images: Tensor) -> Tensor:
    """(N, H, W) grey or (N, H, W, C) colour uint8 → (N, C, H, W), contiguous."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    elif images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.permute(0, 3, 1, 2)
    return images.contiguous()


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units."""
    x = images.float().div_(255).transpose(0, 1).flatten(1)
    return tuple(round(v, 4) for v in x.mean(1).tolist()), tuple(round(v, 4) for v in x.std(1).tolist())


def torchvision_split(cls, root: Path, name: str, **kw):
    """Open a torchvision data set from disk, downloading only when the files are absent."""
    try:
        return cls(root=str(root), download=False, **kw)
    except RuntimeError:
        pass  # not on disk: try the download, which fails fast when offline
    try:
        return cls(root=str(root), download=True, **kw)
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataUnavailable(
            f"{name}: no files under {root / cls.__name__ / 'raw'} and the download failed ({reason}); "
            f"put torchvision's files there, point --data-dir or ODN_DATA at a folder that has them, "
            f"or use the offline default --data digits") from None


def mnist_like(cls, root: Path, name: str, mean: float, std: float) -> DataSet:
    """MNIST-format sets: train = first 50,000, val = last 10,000, test = official (DESIGN.md §1)."""
    train = torchvision_split(cls, root, name, train=True)
    test = torchvision_split(cls, root, name, train=False)
    x, y = as_nchw(train.data), train.targets.long()
    return DataSet(name, (x[:50_000], y[:50_000]), (x[50_000:], y[50_000:]),
                   (as_nchw(test.data), test.targets.long()), num_classes=len(train.classes), in_chans=1,
                   image_size=x.shape[-1], mean=(mean,), std=(std,), classes=list(train.classes))


@loader("mnist")
def mnist(root: Path) -> DataSet:
    from torchvision.datasets import MNIST
    return mnist_like(MNIST, root, "mnist", 0.1307, 0.3081)


@loader("fashion_mnist")
def fashion_mnist(root: Path) -> DataSet:
    from torchvision.datasets import FashionMNIST
    return mnist_like(FashionMNIST, root, "fashion_mnist", 0.2860, 0.3530)


@loader("digits")
def digits(root: Path) -> DataSet:
    """scikit-learn's bundled 8×8 digits: 1,257 train / 180 val / 360 test, stratified, seed 0."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise DataUnavailable("digits needs scikit-learn: pip install 'odn[digits]' "
                              "(or scikit-learn)") from None
    bunch = load_digits()
    # pixel values are 0..16; scale to the uint8 range every other set uses
    images = torch.from_numpy(bunch.images * (255 / 16)).round().to(torch.uint8)
    labels = torch.from_numpy(bunch.target).long()
    index = torch.arange(len(labels)).numpy()
    rest, test = train_test_split(index, test_size=360, stratify=bunch.target, random_state=0)
    train, val = train_test_split(rest, test_size=180, stratify=bunch.target[rest], random_state=0)
    x = as_nchw(images)
    pick = lambda i: (x[torch.from_numpy(i)], labels[torch.from_numpy(i)])
    mean, std = channel_stats(pick(train)[0])
    return DataSet("digits", pick(train), pick(val), pick(test), num_classes=10, in_chans=1, image_size=8,
                   mean=mean, std=std, classes=[str(c) for c in range(10)])
