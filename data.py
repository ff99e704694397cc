"""Data sets for odn, held in memory as uint8 tensors (N, C, H, W) with int64 labels.

One function per data set returns a `DataSet`: the train / val / test splits plus the facts a
model needs (classes, channels, image size, mean/std) and the augmentation that suits it.
Normalisation, batching and augmentation happen later, on tensors, on the training device
(odn.batches): per-sample PIL transforms are far too slow on two CPU cores (DESIGN.md §4;
measured in BENCHMARKS.md, "Data loading").

Names: digits (offline default), mnist, fashion_mnist, emnist (letters), svhn, cifar10, cifar100,
stl10, and folder:<path> for a user's ImageFolder tree. Where files come from: torchvision's
dataset classes read an existing torchvision-layout folder under the data root (`--data-dir`,
else $ODN_DATA, else ./data) and download when online; offline with no files, one line names the
files expected and where. `digits` ships inside scikit-learn, so it works on any machine.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


class DataUnavailable(RuntimeError):
    """A data set could not be found on disk nor downloaded; the message says how to fix it."""


Augment = Callable[[Tensor, torch.Generator], Tensor]


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
    augment: Augment | None = None  # what --augment applies: crop_flip, or crop where a mirror changes the class
    augment_by_default: bool = False  # the paper trains the grey sets without augmentation
    skipped: list[str] = field(default_factory=list)  # unreadable image files left out (folders only)


LOADERS: dict[str, Callable[[Path], DataSet]] = {}


def loader(name: str):
    def decorate(fn):
        LOADERS[name] = fn
        return fn
    return decorate


def default_root() -> Path:
    return Path(os.environ.get("ODN_DATA") or "data")


def load(name: str, root: str | Path | None = None, *, image_size: int = 0, strict_images: bool = False,
         cache: bool = False) -> DataSet:
    """Load a data set by name from `root` (default: $ODN_DATA, else ./data).

    `folder:<path>` reads a user's ImageFolder tree instead; its unreadable images are skipped (listed
    in `skipped`) unless `strict_images`. `image_size` > 0 resizes every image to image_size ×
    image_size (bilinear, antialiased); 0 keeps the native size. `cache` decodes the set once into
    `odn-cache/` beside the data and memory-maps it from then on (see `read_cache`).
    """
    if image_size < 0:
        raise ValueError(f"--image-size must be ≥ 0, got {image_size}")
    if name.startswith("folder:"):
        return image_folder(Path(name.removeprefix("folder:")).expanduser(), image_size, strict_images, cache)
    if name not in LOADERS:
        hint = f"; {name} is a folder: use folder:{name}" if Path(name).expanduser().is_dir() else ""
        raise LookupError(f"unknown data set {name!r}{hint}; known: {', '.join(sorted(LOADERS))}, folder:<path>")
    root = Path(root) if root else default_root()
    cached = root / CACHE_DIR / f"{name}-{image_size or 'native'}.safetensors"
    if cache and cached.is_file():
        return read_cache(cached)
    dataset = LOADERS[name](root)
    if image_size and dataset.train[0].shape[-2:] != (image_size, image_size):
        resize = lambda split: (resized(split[0], image_size), split[1])
        dataset.train, dataset.val, dataset.test = map(resize, (dataset.train, dataset.val, dataset.test))
        dataset.image_size = image_size
    if cache:
        splits = {split: getattr(dataset, split) for split in SPLITS}
        write_cache(cached, dataset, {k: (v[0].shape, v[1]) for k, v in splits.items()},
                    lambda split, out: out.copy_(splits[split][0]))
        return read_cache(cached)
    return dataset


# ----------------------------------------------------------------------------------------------
# the decoded cache: a set decoded once, at the training resolution, into one safetensors file
# that every later run and every torchrun rank memory-maps. Batches gather from the mapping, so
# resident memory stays flat however large the set is: the kernel pages images in and out.

CACHE_DIR = "odn-cache"
SPLITS = ("train", "val", "test")
AUGMENTS = {"crop_flip": lambda: crop_flip, "crop": lambda: crop}


def write_cache(path: Path, dataset: DataSet, shapes: dict[str, tuple[torch.Size, Tensor]],
                fill: Callable[[str, Tensor], object], fingerprint: str = "",
                stats: Callable[[Tensor], tuple] | None = None) -> None:
    """Write the safetensors cache split by split, without holding a whole split in memory.

    `shapes` gives each split's image shape and labels; `fill(split, out)` decodes the split's
    images into `out`, a uint8 tensor mapped onto the file; `stats`, when given, computes (mean, std)
    from the written train images. Written to a temporary name and renamed, so an interrupted build
    leaves no half cache behind.
    """
    entries, offset = {}, 0
    for split in SPLITS:
        shape, labels = shapes[split]
        for key, dtype, size, dims in ((f"{split}.images", "U8", math.prod(shape), list(shape)),
                                       (f"{split}.labels", "I64", 8 * len(labels), [len(labels)])):
            entries[key] = {"dtype": dtype, "shape": dims, "data_offsets": [offset, offset + size]}
            offset += size
    facts = {"name": dataset.name, "num_classes": dataset.num_classes, "in_chans": dataset.in_chans,
             "image_size": dataset.image_size, "mean": list(dataset.mean), "std": list(dataset.std),
             "classes": dataset.classes, "augment": getattr(dataset.augment, "__name__", None),
             "augment_by_default": dataset.augment_by_default, "skipped": dataset.skipped,
             "fingerprint": fingerprint}
    encode = lambda: json.dumps({"__metadata__": {"odn": json.dumps(facts)}, **entries}).encode()
    header = encode() + b" " * 1024  # room for the statistics, known once train is written
    header += b" " * (-len(header) % 8)  # safetensors aligns the data to 8 bytes
    partial = path.with_suffix(".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # several torchrun ranks (or runs) may want the same cache at once: one builds it, the others
        # wait for the lock and then find it built
        import fcntl
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.is_file() and cache_fingerprint(path) == fingerprint:
                return
            write_splits(partial, header, entries, shapes, fill, facts, encode, stats, offset)
            os.replace(partial, path)
    except OSError as error:
        if partial.is_file():
            partial.unlink()
        raise DataUnavailable(f"cannot write the cache {path} ({error.strerror or error}); make {path.parent} "
                              "writable or free space there, or drop --cache") from None


def write_splits(partial: Path, header: bytes, entries: dict, shapes: dict, fill, facts: dict, encode, stats,
                 data_bytes: int) -> None:
    """`write_cache`'s body: the header, then every split's images and labels, then the statistics."""
    import numpy as np
    with open(partial, "wb") as file:
        file.write(len(header).to_bytes(8, "little") + header)
        # claim the space now: a full disk is an OSError here, not a crash halfway through the mapping
        os.posix_fallocate(file.fileno(), 0, 8 + len(header) + data_bytes)
    base = 8 + len(header)
    for split in SPLITS:
        shape, labels = shapes[split]
        start, end = entries[f"{split}.images"]["data_offsets"]
        if end > start:
            images = np.memmap(partial, np.uint8, "r+", base + start, tuple(shape))
            fill(split, torch.from_numpy(images))
            images.flush()
            del images
        start, end = entries[f"{split}.labels"]["data_offsets"]
        with open(partial, "r+b") as file:
            file.seek(base + start)
            file.write(labels.to(torch.int64).numpy().tobytes())
    if stats is not None:
        start = entries["train.images"]["data_offsets"][0]
        train = np.memmap(partial, np.uint8, "c", base + start, tuple(shapes["train"][0]))
        mean, std = stats(torch.from_numpy(train))
        facts.update(mean=list(mean), std=list(std))
        del train
        with open(partial, "r+b") as file:
            file.seek(8)
            file.write(encode().ljust(len(header)))


def cache_fingerprint(path: Path) -> str | None:
    """The fingerprint a cache file was built with (None when its header cannot be read)."""
    try:
        with open(path, "rb") as file:
            header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
        return json.loads(header["__metadata__"]["odn"])["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None


def read_cache(path: Path) -> DataSet:
    """A cache written by `write_cache`, its images memory-mapped (copy-on-write: never written back)."""
    import numpy as np
    try:
        with open(path, "rb") as file:
            size = int.from_bytes(file.read(8), "little")
            header, base = json.loads(file.read(size)), 8 + size
        facts = json.loads(header.pop("__metadata__")["odn"])
        splits = {}
        for split in SPLITS:
            images, labels = header[f"{split}.images"], header[f"{split}.labels"]
            start, end = images["data_offsets"]
            x = torch.from_numpy(np.memmap(path, np.uint8, "c", base + start, tuple(images["shape"]))) if end > start \
                else torch.empty(images["shape"], dtype=torch.uint8)
            start, end = labels["data_offsets"]
            y = torch.from_numpy(np.fromfile(path, np.int64, labels["shape"][0], offset=base + start))
            if len(y) != labels["shape"][0] or len(x) != len(y):
                raise ValueError("truncated")
            splits[split] = (x, y)
    except (OSError, ValueError, KeyError) as error:
        raise DataUnavailable(f"the cache {path} is damaged ({error}); delete it and run again with --cache "
                              "to rebuild it") from None
    return DataSet(facts["name"], splits["train"], splits["val"], splits["test"], facts["num_classes"],
                   facts["in_chans"], facts["image_size"], tuple(facts["mean"]), tuple(facts["std"]),
                   facts["classes"], AUGMENTS[facts["augment"]]() if facts["augment"] else None,
                   facts["augment_by_default"], facts["skipped"])


# ----------------------------------------------------------------------------------------------
# tensor helpers: layout, statistics, resizing, seeded stratified splits


def as_nchw(images: Tensor) -> Tensor:
    """(N, H, W) grey or (N, H, W, C) colour uint8 → (N, C, H, W), contiguous."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    elif images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.permute(0, 3, 1, 2)
    return images.contiguous()


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units."""
    n = images.shape[0] * images.shape[2] * images.shape[3]
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    # in chunks of ~4 M values: STL-10's train split as one float tensor would take 0.5 GB
    for chunk in images.split(max(1, 2**22 // images[0].numel())):
        x = chunk.float().div_(255)
        total += x.sum((0, 2, 3), dtype=torch.float64)
        squares += x.square().sum((0, 2, 3), dtype=torch.float64)
    mean = total / n
    # a constant channel (a synthetic set, a mask, grey saved as colour with one channel blank) would
    # divide by zero: one grey level is the least spread a channel of uint8 images is given
    std = ((squares - n * mean.square()) / (n - 1)).clamp_(min=0).sqrt().clamp_(min=1 / 255)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def resized(images: Tensor, size: int) -> Tensor:
    """uint8 (N, C, H, W) → uint8 (N, C, size, size), bilinear with antialiasing, in chunks."""
    chunks = [F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True)
              .round_().clamp_(0, 255).to(torch.uint8) for chunk in images.split(1024)]
    return torch.cat(chunks)


def stratified_split(labels: Tensor, size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Seeded split of range(len(labels)) into (kept, held out): `size` held out, each class in proportion."""
    n = len(labels)
    if not 0 < size < n:
        raise ValueError(f"cannot hold out {size} of {n} images")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    counts = torch.bincount(labels)
    share = counts.double() * size / n
    take = share.floor().long()
    # largest remainder: the classes with the biggest fractional share get the images still owed
    owed = size - int(take.sum())
    take[torch.argsort(share - take, descending=True, stable=True)[:owed]] += 1
    # rank of each image within its class, in the shuffled order; the first `take` of a class are held out
    shuffled = labels[order]
    grouped = torch.argsort(shuffled, stable=True)
    rank = torch.empty(n, dtype=torch.long)
    rank[grouped] = torch.arange(n) - (counts.cumsum(0) - counts)[shuffled[grouped]]
    held = rank < take[shuffled]
    return order[~held].sort().values, order[held].sort().values


def hold_out(x: Tensor, y: Tensor, size: int, seed: int = 0):
    """(train, val) with a seeded stratified `size` images held out of (x, y) for validation."""
    keep, held = stratified_split(y, size, seed)
    return (x[keep], y[keep]), (x[held], y[held])


# ----------------------------------------------------------------------------------------------
# augmentation on tensors: one gather per batch on the batch's device, random numbers from the CPU generator


def crop_flip(x: Tensor, generator: torch.Generator, flip: bool = True) -> Tensor:
    """Random crop with padding min(H, W) // 8 (4 px at 32×32) and, if `flip`, a random horizontal flip.

    x is a normalised float batch (N, C, H, W); the padding is 0 after normalisation, i.e. the data set's
    mean colour (torchvision pads black before normalising; the two differ only in the border).
    """
    n, _, h, w = x.shape
    pad = max(1, min(h, w) // 8)
    shift = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=generator)
    mirror = torch.rand(n, 1, generator=generator) < 0.5  # drawn even when unused: same stream either way
    rows = shift[0].to(x.device) + torch.arange(h, device=x.device)  # (N, H) rows of the padded image
    cols = torch.arange(w, device=x.device).expand(n, w)
    if flip:
        cols = torch.where(mirror.to(x.device), w - 1 - cols, cols)
    cols = shift[1].to(x.device) + cols  # (N, W)
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (N, H + 2p, W + 2p, C)
    out = padded[torch.arange(n, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)


def crop(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random crop with padding only: for digits and letters, where a mirror image changes the class."""
    return crop_flip(x, generator, flip=False)


# ----------------------------------------------------------------------------------------------
# torchvision-backed sets


def torchvision_split(cls, root: Path, name: str, folder: Path, files: list[tuple[str, str | None]],
                      hint: str = "", **kw):
    """Open a torchvision data set from disk, downloading only when its files are absent or corrupt.

    `files` are (name, md5) under `folder`, as the torchvision class checks them: with download=False
    torchvision still verifies the md5 of CIFAR, SVHN and STL-10 files, so a truncated copy is caught.
    """
    try:
        return cls(root=str(root), download=False, **kw)
    except (RuntimeError, ValueError, OSError, EOFError) as error:  # not on disk, or damaged: try the download
        local = str(error).splitlines()[0] if str(error) else type(error).__name__
    try:
        return cls(root=str(root), download=True, **kw)
    except Exception as error:
        from torchvision.datasets.utils import check_integrity

        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        missing = [f for f, _ in files if not (folder / f).is_file()]
        corrupt = [f for f, md5 in files if f not in missing and md5 and not check_integrity(str(folder / f), md5)]
        if len(missing) == len(files):
            state = f"no files under {folder} (expected {', '.join(f for f, _ in files)})"
            inside = data_root_above(root, folder, files[0][0])
            if inside:  # --data-dir named the data set's own folder, a common slip
                raise DataUnavailable(f"{name}: {state}; the data root {root} (--data-dir or ODN_DATA) is inside "
                                      f"the data set: point it at {inside}, the folder that holds "
                                      f"{folder.relative_to(root).parts[0]}/") from None
        elif not missing and not corrupt:  # every file is there, yet torchvision could not read them
            raise DataUnavailable(f"{name}: the files under {folder} are damaged or truncated ({local}); replace "
                                  f"them with good copies of {', '.join(f for f, _ in files)}") from None
        else:
            state = f"incomplete files under {folder} (missing: {', '.join(missing) or 'none'}; " \
                    f"checksum mismatch: {', '.join(corrupt) or 'none'})"
        raise DataUnavailable(
            f"{name}: {state} and the download failed ({reason}); put torchvision's files there{hint}, "
            f"point --data-dir or ODN_DATA at a folder that has them, or use the offline default --data digits"
        ) from None


def data_root_above(root: Path, folder: Path, file: str) -> Path | None:
    """The data root the user meant when `root` is already part of `folder`'s path below it: with
    folder = root/MNIST/raw, a root of …/MNIST or …/MNIST/raw that holds `file` gives …"""
    below = folder.relative_to(root).parts
    for shared in range(1, len(below) + 1):
        if root.parts[-shared:] == below[:shared] and (root.joinpath(*below[shared:]) / file).is_file():
            return root.parents[shared - 1]
    return None


def mnist_like(cls, root: Path, name: str, mean: float, std: float, flip: bool) -> DataSet:
    """MNIST-format sets: train = first 50,000, val = last 10,000, test = official (DESIGN.md §1)."""
    files = [f"{p}-{kind}-ubyte" for p in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")]
    folder = root / cls.__name__ / "raw"
    for file in files:
        problem = idx_problem(folder / file)
        if problem:
            raise DataUnavailable(f"{name}: {folder / file} is damaged ({problem}); replace it with a good copy "
                                  f"(torchvision's {cls.__name__} files) or delete it to download it again")
    train = torchvision_split(cls, root, name, folder, [(f, None) for f in files], train=True)
    test = torchvision_split(cls, root, name, folder, [(f, None) for f in files], train=False)
    x, y = as_nchw(train.data), train.targets.long()
    return DataSet(name, (x[:50_000], y[:50_000]), (x[50_000:], y[50_000:]),
                   (as_nchw(test.data), test.targets.long()), num_classes=len(train.classes), in_chans=1,
                   image_size=x.shape[-1], mean=(mean,), std=(std,), classes=list(train.classes),
                   augment=crop_flip if flip else crop)


def idx_problem(path: Path) -> str | None:
    """Why an idx file (MNIST's format) is damaged, judged by its header, or None (fine or absent)."""
    if not path.is_file():
        return None
    with open(path, "rb") as file:
        head = file.read(4)
        if len(head) < 4 or head[:2] != b"\0\0" or not 1 <= head[3] <= 4:
            return "not an idx file"
        dims = [int.from_bytes(file.read(4), "big") for _ in range(head[3])]
    expected = 4 + 4 * len(dims) + math.prod(dims)
    size = path.stat().st_size
    return None if size == expected else f"{size:,} bytes where its header promises {expected:,}"


@loader("mnist")
def mnist(root: Path) -> DataSet:
    from torchvision.datasets import MNIST
    return mnist_like(MNIST, root, "mnist", 0.1307, 0.3081, flip=False)


@loader("fashion_mnist")
def fashion_mnist(root: Path) -> DataSet:
    from torchvision.datasets import FashionMNIST
    return mnist_like(FashionMNIST, root, "fashion_mnist", 0.2860, 0.3530, flip=True)


@loader("emnist")
def emnist(root: Path) -> DataSet:
    """EMNIST letters: 26 classes (a..z, upper and lower case merged), labels 1..26 shifted to 0..25.

    The reference code had no validation split (selection leaked into test, DESIGN.md §2); here a
    seeded stratified 10 % of train is held out: 112,320 train / 12,480 val / 20,800 test.
    Mean/std: the paper gives none, so they are computed from our train split.
    """
    from torchvision.datasets import EMNIST

    folder = root / "EMNIST" / "raw"
    files = [(f"emnist-letters-{s}-{kind}-ubyte", None) for s in ("train", "test")
             for kind in ("images-idx3", "labels-idx1")]
    hint = " (from NIST's gzip.zip: gunzip its gzip/emnist-letters-*.gz there)"
    train, test = (torchvision_split(EMNIST, root, "emnist", folder, files, hint, split="letters", train=t)
                   for t in (True, False))
    # the files store each image transposed (column-major); transpose back so letters stand upright
    images = lambda d: as_nchw(d.data.transpose(-1, -2))
    x, y = images(train), train.targets.long() - 1
    train_split, val_split = hold_out(x, y, len(y) // 10)
    mean, std = channel_stats(train_split[0])
    return DataSet("emnist", train_split, val_split, (images(test), test.targets.long() - 1), num_classes=26,
                   in_chans=1, image_size=28, mean=mean, std=std, classes=list(train.classes[1:]), augment=crop)


# §IV: the reference trains SVHN and CIFAR on raw [0, 1] pixels (no normalisation). We keep that, so
# paper mode reproduces it: mean 0 / std 1 per channel. Batch norm right after the stem's first
# conv absorbs the input scale anyway, and odn.json records (0, 1) so inference does the same.
RAW = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@loader("svhn")
def svhn(root: Path) -> DataSet:
    """SVHN digits (the 32×32 cropped format): val = last 5,000 of train (DESIGN.md §1): 68,257 / 5,000 / 26,032."""
    from torchvision.datasets import SVHN

    # torchvision puts the .mat files straight in the root it is given; we look in ROOT/SVHN, or in
    # ROOT itself when a user already has them there
    folder = root if (root / SVHN.split_list["train"][1]).is_file() and not (root / "SVHN").is_dir() \
        else root / "SVHN"
    files = [(SVHN.split_list[s][1], SVHN.split_list[s][2]) for s in ("train", "test")]
    try:
        train, test = (torchvision_split(SVHN, folder, "svhn", folder, files, split=s) for s in ("train", "test"))
    except ImportError:
        raise DataUnavailable("svhn: reading its .mat files needs scipy: pip install scipy") from None
    x, y = torch.from_numpy(train.data), torch.from_numpy(train.labels).long()  # data is (N, 3, 32, 32)
    return DataSet("svhn", (x[:-5000], y[:-5000]), (x[-5000:], y[-5000:]),
                   (torch.from_numpy(test.data), torch.from_numpy(test.labels).long()), num_classes=10,
                   in_chans=3, image_size=32, mean=RAW[0], std=RAW[1], classes=[str(c) for c in range(10)],
                   augment=crop, augment_by_default=True)


def cifar(cls, root: Path, name: str) -> DataSet:
    """CIFAR-10/100: val = last 5,000 of train (as for SVHN): 45,000 / 5,000 / 10,000."""
    folder = root / cls.base_folder
    files = [(f, md5) for f, md5 in cls.train_list + cls.test_list] + [(cls.meta["filename"], cls.meta["md5"])]
    train, test = (torchvision_split(cls, root, name, folder, files, train=t) for t in (True, False))
    images = lambda d: torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) → NCHW
    x, y = images(train), torch.tensor(train.targets)
    return DataSet(name, (x[:-5000], y[:-5000]), (x[-5000:], y[-5000:]), (images(test), torch.tensor(test.targets)),
                   num_classes=len(train.classes), in_chans=3, image_size=32, mean=RAW[0], std=RAW[1],
                   classes=list(train.classes), augment=crop_flip, augment_by_default=True)


@loader("cifar10")
def cifar10(root: Path) -> DataSet:
    from torchvision.datasets import CIFAR10
    return cifar(CIFAR10, root, "cifar10")


@loader("cifar100")
def cifar100(root: Path) -> DataSet:
    from torchvision.datasets import CIFAR100
    return cifar(CIFAR100, root, "cifar100")


@loader("stl10")
def stl10(root: Path) -> DataSet:
    """STL-10's labelled images, 96×96: a seeded stratified 500 of the 5,000 train held out: 4,500 / 500 / 8,000.

    torchvision checks all five binaries, the 2.6 GB unlabeled_X.bin included, on every load (md5).
    Mean/std are computed from our train split.
    """
    from torchvision.datasets import STL10

    folder = root / STL10.base_folder
    files = [(f, md5) for f, md5 in STL10.train_list + STL10.test_list]
    train, test = (torchvision_split(STL10, root, "stl10", folder, files, split=s) for s in ("train", "test"))
    x, y = torch.from_numpy(train.data), torch.from_numpy(train.labels).long()  # data is (N, 3, 96, 96)
    train_split, val_split = hold_out(x, y, 500)
    mean, std = channel_stats(train_split[0])
    classes = getattr(train, "classes", None) or \
        ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    return DataSet("stl10", train_split, val_split, (torch.from_numpy(test.data), torch.from_numpy(test.labels).long()),
                   num_classes=10, in_chans=3, image_size=96, mean=mean, std=std, classes=list(classes),
                   augment=crop_flip, augment_by_default=True)


# ----------------------------------------------------------------------------------------------
# a user's own images


def image_folder(path: Path, image_size: int = 0, strict_images: bool = False, cache: bool = False) -> DataSet:
    """An ImageFolder tree: PATH/train/<class>/<image>, optional PATH/val/ and PATH/test/ alike; or
    torchvision's plain ImageFolder, PATH/<class>/<image>, which is then the train split.

    Missing val/ or test/ are held out of train/, seeded and stratified: test 20 %, val 10 % of train/.
    Grey when every image is grey (16-bit grey scaled to 8 bits), else RGB (alpha dropped). Images of
    different sizes need `image_size`; resizing squashes to image_size × image_size, no crop.
    Mean/std come from the train split; augmentation (crop + flip) is off unless asked for.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    name = f"folder:{path}"
    # the plain ImageFolder layout most photo collections come in: its class folders are train/ (the
    # cache folder odn writes beside them is not a class)
    subfolders = sorted(d.name for d in path.iterdir() if d.is_dir() and d.name != CACHE_DIR
                        and not d.name.startswith(".")) if path.is_dir() else []
    plain = bool(subfolders) and not {"train", "val", "test"} & set(subfolders)
    train_dir, where = (path, f"{path}/") if plain else (path / "train", "train/")
    if not train_dir.is_dir():
        raise DataUnavailable(f"{name}: no folder {path / 'train'}; expected {path}/train/<class>/<image> "
                              f"({', '.join(e[1:] for e in IMG_EXTENSIONS)}), optionally val/ and test/ beside "
                              f"it, or {path}/<class>/<image>")
    try:
        classes = subfolders if plain else find_classes(str(train_dir))[0]
        class_to_idx = {c: i for i, c in enumerate(classes)}
        samples = {"train": make_dataset(str(train_dir), class_to_idx, IMG_EXTENSIONS)}
        for split in ("val", "test"):
            if not plain and (path / split).is_dir():
                extra = sorted(set(find_classes(str(path / split))[0]) - set(classes))
                if extra:
                    raise DataUnavailable(f"{name}: {split}/ has classes that train/ lacks: {', '.join(extra)}")
                samples[split] = make_dataset(str(path / split), class_to_idx, IMG_EXTENSIONS, allow_empty=True)
    except FileNotFoundError as error:  # no class folders, or a class without images
        raise DataUnavailable(f"{name}: {str(error).splitlines()[0]}") from None

    from PIL import Image

    # the cache is valid while every file's path, size and time are unchanged (one stat per file)
    listing = sorted((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for items in samples.values() for f, _ in items)
    fingerprint = hashlib.sha256(repr((listing, image_size, strict_images)).encode()).hexdigest()
    cached = path / CACHE_DIR / f"{image_size or 'native'}.safetensors"
    if cache and cache_fingerprint(cached) == fingerprint:  # the header alone says whether it is current
        return read_cache(cached)
    if len(classes) < 2:
        raise DataUnavailable(f"{name}: {where} has {len(classes)} class folder{'s' * (len(classes) != 1)} "
                              f"({', '.join(classes) or 'none'}); a classifier needs at least two")
    headers, unreadable = {}, []
    for split_samples in samples.values():
        for file, _ in split_samples:
            try:
                with Image.open(file) as image:
                    image.load()  # decode now: a truncated file fails here, not halfway through training
                    headers[file] = image.mode, image.size
            except (OSError, SyntaxError, ValueError):
                unreadable.append(file)
    if unreadable and strict_images:
        raise DataUnavailable(f"{name}: {len(unreadable)} unreadable image(s), e.g. {unreadable[0]}; "
                              "replace or remove them, or drop --strict-images to skip them")
    samples = {split: [(f, c) for f, c in items if f in headers] for split, items in samples.items()}
    counts = torch.bincount(torch.tensor([c for _, c in samples["train"]] or [0]), minlength=len(classes))
    needed = 1 + ("val" not in samples) + ("test" not in samples)  # one image per split held out of train/
    if int(counts.min()) < needed:
        small = classes[int(counts.argmin())]
        raise DataUnavailable(f"{name}: class {small!r} has {int(counts.min())} readable image(s) in {where}; "
                              f"each class needs at least {needed} (train" + ", val" * ("val" not in samples) +
                              ", test" * ("test" not in samples) + " each), or give val/ and test/ folders")
    grey = all(mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") for mode, _ in headers.values())
    sizes = sorted({size for _, size in headers.values()})
    if not image_size and len(sizes) > 1:
        shown = ", ".join(f"{w}×{h}" for w, h in sizes[:3])
        raise DataUnavailable(f"{name}: images differ in size ({shown}{', …' if len(sizes) > 3 else ''}); "
                              "pass --image-size N to resize them all to N×N")
    width, height = (image_size, image_size) if image_size else sizes[0]
    # missing test/ and val/ are held out of train/ (seeded, stratified) before anything is decoded
    n = len(samples["train"])
    for split, share in (("test", 0.2), ("val", 0.1)):
        if split not in samples:
            keep, held = stratified_split(torch.tensor([c for _, c in samples["train"]]), max(1, round(share * n)))
            samples[split] = [samples["train"][i] for i in held]
            samples["train"] = [samples["train"][i] for i in keep]
    channels = 1 if grey else 3
    images, free = sum(map(len, samples.values())), available_memory()
    if not cache and images * channels * width * height > 0.8 * free:  # refused now, not killed mid-decode
        raise DataUnavailable(f"{name}: its {images:,} images at {width}×{height} need "
                              f"{images * channels * width * height / 2**30:.1f} GiB decoded, more than this "
                              f"machine has free ({free / 2**30:.1f} GiB); pass --image-size N to shrink them, "
                              "or --cache to memory-map them from disk")
    dataset = DataSet(name, None, None, None, num_classes=len(classes), in_chans=channels,
                      image_size=max(width, height), mean=(), std=(), classes=classes, augment=crop_flip,
                      skipped=unreadable)
    labels = {split: torch.tensor([c for _, c in items], dtype=torch.long) for split, items in samples.items()}
    if cache:  # decoded straight into the mapped file: a set larger than memory never sits in it
        shapes = {split: (torch.Size((len(labels[split]), channels, height, width)), labels[split]) for split in SPLITS}
        write_cache(cached, dataset, shapes, lambda split, out: read_images(samples[split], grey, (width, height), out),
                    fingerprint, channel_stats)
        return read_cache(cached)
    dataset.train, dataset.val, dataset.test = ((read_images(samples[split], grey, (width, height)), labels[split])
                                                for split in SPLITS)
    dataset.mean, dataset.std = channel_stats(dataset.train[0])
    return dataset


def available_memory() -> int:
    """Bytes the kernel says can be taken without swapping (MemAvailable), else free physical memory."""
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # no way to ask (Windows): do not refuse
            return 2**62


def read_images(samples: list[tuple[str, int]], grey: bool, size: tuple[int, int], out: Tensor | None = None) -> Tensor:
    """Decode image files into uint8 (N, C, H, W) (into `out` when given), resized to `size` = (W, H)."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    width, height = size
    x = torch.empty((len(samples), 1 if grey else 3, height, width), dtype=torch.uint8) if out is None else out
    for i, (file, _) in enumerate(samples):
        with Image.open(file) as image:
            if image.mode.startswith("I"):  # 16-bit grey (scans, microscopy): 0..65535 → 0..255
                image = image.convert("I").point(lambda v: v / 257)
            image = image.convert("L" if grey else "RGB")
            if image.size != size:
                image = image.resize(size, Image.Resampling.BILINEAR)
            x[i] = pil_to_tensor(image)
    return x


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
                   mean=mean, std=std, classes=[str(c) for c in range(10)], augment=crop)
