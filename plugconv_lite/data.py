"""CIFAR-100 (Krizhevsky, 2009), kept on the accelerator as uint8, augmented there; and a synthetic stand-in.

Data root: the ``root`` argument, else ``$PLUGCONV_DATA``, else ``<cache>/data``; the files live in the
torchvision-compatible folder ``<root>/cifar-100-python/{train,test,meta}``. Every file's md5 is checked BEFORE it
is unpickled (unpickling runs code). A missing, partial or corrupt file is reported by name; with
``download=True`` the official archive is fetched into a temporary folder, verified, extracted, verified again and
only then moved into place, so an interrupted download never leaves a half-written cache.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
FOLDER = "cifar-100-python"
FILES = {  # name: (md5, bytes)
    "train": ("16019d7e3df5f24257cddd939b257f8d", 155249918),
    "test": ("f0ef6b0ae62326f3e7ffdfab6717acfc", 31049707),
    "meta": ("7973b15100ade9c7d40fb424638fde48", 1473),
}
# training-set channel statistics (checked against the data in tests/test_data.py)
MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)


class DataIntegrityError(RuntimeError):
    """A dataset file is missing, truncated or corrupt."""


def cache_dir() -> Path:
    """Where the library keeps downloads, smoke-run records and checkpoints: ``$PLUGCONV_CACHE``, else
    ``$XDG_CACHE_HOME/plugconv_lite``, else ``~/.cache/plugconv_lite``."""
    if os.environ.get("PLUGCONV_CACHE"):
        return Path(os.environ["PLUGCONV_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "plugconv_lite"


def data_root(root=None) -> Path:
    """The data root: ``root``, else ``$PLUGCONV_DATA``, else ``<cache>/data``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("PLUGCONV_DATA"):
        return Path(os.environ["PLUGCONV_DATA"]).expanduser()
    return cache_dir() / "data"


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_files(folder: Path) -> dict[str, str]:
    """Problems with the dataset files in ``folder``: {name: what is wrong}; empty if all are intact."""
    problems = {}
    for name, (md5, size) in FILES.items():
        path = folder / name
        if not path.is_file():
            problems[name] = "missing"
        elif path.stat().st_size != size:
            problems[name] = f"{path.stat().st_size} bytes, expected {size} (partial or wrong file)"
        elif md5sum(path) != md5:
            problems[name] = "md5 mismatch (corrupt)"
    return problems


def download_cifar100(root=None, url: str = CIFAR100_URL, progress: bool = True) -> Path:
    """Fetch and verify the official archive, then move the three files into ``<root>/cifar-100-python``."""
    root = data_root(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
    try:
        archive = tmp / "cifar-100-python.tar.gz"
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(unit="B", unit_scale=True, desc="CIFAR-100")

        def hook(blocks, block_size, total):
            if bar is not None:
                bar.total = total
                bar.update(blocks * block_size - bar.n)

        urllib.request.urlretrieve(url, archive, reporthook=hook)
        if bar is not None:
            bar.close()
        if md5sum(archive) != ARCHIVE_MD5:
            raise DataIntegrityError(f"the archive downloaded from {url} fails its md5 check ({ARCHIVE_MD5})")
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name in {f"{FOLDER}/{n}" for n in FILES}]
            if sys.version_info >= (3, 12):
                tar.extractall(tmp, members=members, filter="data")
            else:
                tar.extractall(tmp, members=members)
        problems = check_files(tmp / FOLDER)
        if problems:
            raise DataIntegrityError(f"the extracted files fail their checks: {problems}")
        dest = root / FOLDER
        dest.mkdir(exist_ok=True)
        for name in FILES:
            os.replace(tmp / FOLDER / name, dest / name)  # atomic per file, after verification
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Dataset:
    """Images as uint8 (N, 3, 32, 32) and labels as int64 (N,), for train and test."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list
    source: str                          # "cifar100" or "synthetic"
    md5: dict = field(default_factory=dict)
    root: Optional[str] = None
    note: str = ""                       # where the data came from, in one line (experiments.get_data sets it)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def synthetic(self) -> bool:
        return self.source != "cifar100"

    def to(self, device) -> "Dataset":
        return replace(self, train_x=self.train_x.to(device), train_y=self.train_y.to(device),
                       test_x=self.test_x.to(device), test_y=self.test_y.to(device))

    def subset(self, train: Optional[int] = None, test: Optional[int] = None, seed: int = 0) -> "Dataset":
        """A class-balanced subset (the first ``n / num_classes`` images of each class after a seeded shuffle)."""
        def pick(y: torch.Tensor, n: Optional[int]) -> Optional[torch.Tensor]:
            if n is None or n >= len(y):
                return None
            if n < self.num_classes:
                raise ValueError(f"subset size {n} must be >= num_classes={self.num_classes}")
            g = torch.Generator().manual_seed(seed)
            perm = torch.randperm(len(y), generator=g)
            y_perm = y.cpu()[perm]
            per_class = n // self.num_classes
            keep = torch.cat([perm[y_perm == c][:per_class] for c in range(self.num_classes)])
            return keep.sort().values.to(y.device)

        tr, te = pick(self.train_y, train), pick(self.test_y, test)
        out = self
        if tr is not None:
            out = replace(out, train_x=out.train_x[tr], train_y=out.train_y[tr])
        if te is not None:
            out = replace(out, test_x=out.test_x[te], test_y=out.test_y[te])
        return out

    def describe(self) -> str:
        return (f"{self.source}: {len(self.train_y)} train / {len(self.test_y)} test images, "
                f"{self.num_classes} classes" + (f", from {self.root}" if self.root else ""))


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


_LOADED: dict = {}


def load_cifar100(root=None, download: bool = True, progress: bool = True) -> Dataset:
    """CIFAR-100 from ``<root>/cifar-100-python`` (verified by md5 first), downloading it if allowed.

    Raises ``DataIntegrityError`` naming each missing or corrupt file when the data cannot be made intact.
    """
    root = data_root(root)
    folder = root / FOLDER
    key = str(folder.resolve())
    stamp = tuple((folder / n).stat().st_mtime_ns if (folder / n).exists() else None for n in FILES)
    if key in _LOADED and _LOADED[key][0] == stamp:
        return _LOADED[key][1]
    problems = check_files(folder)
    if problems:
        listing = "; ".join(f"{n}: {p}" for n, p in problems.items())
        if not download:
            raise DataIntegrityError(
                f"CIFAR-100 in {folder} is not intact ({listing}). Point PLUGCONV_DATA (or root=) at the folder that "
                f"contains {FOLDER}/, or call load_cifar100(download=True) to fetch {CIFAR100_URL}.")
        print(f"CIFAR-100 in {folder} is not intact ({listing}); downloading the official archive.")
        download_cifar100(root, progress=progress)
        problems = check_files(folder)
        if problems:
            raise DataIntegrityError(f"CIFAR-100 in {folder} is still not intact after download: {problems}")
        stamp = tuple((folder / n).stat().st_mtime_ns for n in FILES)

    def arrays(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        d = _unpickle(folder / split)
        x = torch.from_numpy(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).copy())
        return x, torch.tensor(d["fine_labels"], dtype=torch.int64)

    train_x, train_y = arrays("train")
    test_x, test_y = arrays("test")
    classes = list(_unpickle(folder / "meta")["fine_label_names"])
    ds = Dataset(train_x, train_y, test_x, test_y, classes, "cifar100", {n: m for n, (m, _) in FILES.items()},
                 str(root))
    _LOADED.clear()
    _LOADED[key] = (stamp, ds)
    return ds


SYNTHETIC_BANNER = ("!!! SYNTHETIC DATA: random CIFAR-shaped images, not CIFAR-100. Accuracies on it say nothing "
                    "about any module. !!!")


def synthetic_cifar100(train: int = 5000, test: int = 1000, num_classes: int = 100, seed: int = 0,
                       quiet: bool = False) -> Dataset:
    """A learnable CIFAR-shaped stand-in: each class is a smooth random colour template plus per-image noise."""
    if not quiet:
        warnings.warn(SYNTHETIC_BANNER, stacklevel=2)
        print(SYNTHETIC_BANNER)
    g = torch.Generator().manual_seed(seed)
    templates = torch.nn.functional.interpolate(torch.rand(num_classes, 3, 4, 4, generator=g), size=32,
                                                mode="bilinear", align_corners=False)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        x = 0.6 * templates[y] + 0.4 * torch.rand(n, 3, 32, 32, generator=g)
        return (x * 255).round().clamp(0, 255).to(torch.uint8), y

    tx, ty = make(train)
    vx, vy = make(test)
    return Dataset(tx, ty, vx, vy, [f"class_{i}" for i in range(num_classes)], "synthetic")


def cifar100_available(root=None) -> bool:
    """True if an intact CIFAR-100 copy is at the data root (checks sizes only; loading checks md5)."""
    folder = data_root(root) / FOLDER
    return all((folder / n).is_file() and (folder / n).stat().st_size == size for n, (_, size) in FILES.items())


# ---------------------------------------------------------------------------------------------------------------
# Batches on the accelerator


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero-padding by ``pad`` plus a random horizontal flip, as one gather on x's device.

    x: uint8 (B, C, H, W). Each image gets its own offsets (dy, dx) in [0, 2 pad] and flip bit.
    """
    b, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    flip = torch.rand(b, device=dev, generator=generator) < 0.5
    ar_h, ar_w = torch.arange(h, device=dev), torch.arange(w, device=dev)
    rows = dy[:, None] + ar_h                                          # (B, H)
    cols = dx[:, None] + torch.where(flip[:, None], ar_w.flip(0), ar_w)  # (B, W): a flip reverses the columns
    out = padded[torch.arange(b, device=dev)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


class DeviceLoader:
    """Mini-batches from uint8 tensors that already live on the device; deterministic given (seed, epoch).

    Keeping the whole dataset on the GPU (150 MB for CIFAR-100) and augmenting there removes the CPU data pipeline,
    which on Colab's two cores is otherwise the bottleneck.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, train: bool, seed: int = 0,
                 mean=MEAN, std=STD, channels_last: bool = False, drop_last: Optional[bool] = None):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.x, self.y, self.batch_size, self.train, self.seed = x, y, batch_size, train, seed
        self.mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=x.device).view(1, 3, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.drop_last = train if drop_last is None else drop_last

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return ((x_uint8.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        g = None
        order = torch.arange(n, device=self.x.device)
        if self.train:
            g = torch.Generator(device=self.x.device).manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, device=self.x.device, generator=g)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb = self.x[idx]
            if self.train:
                xb = crop_flip(xb, g)
            yield self.normalize(xb), self.y[idx]
