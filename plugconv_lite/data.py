"""CIFAR-100 (Krizhevsky, 2009), kept on the accelerator as uint8, augmented there; and a synthetic stand-in.

Data root: the ``root`` argument, else ``$PLUGCONV_DATA``, else ``<cache>/data``; the files live in the
torchvision-compatible folder ``<root>/cifar-100-python/{train,test,meta}``. Every file's md5 is checked BEFORE it
is unpickled (unpickling runs code). A missing, partial or corrupt file is reported by name; with
``download=True`` the official archive is fetched into a temporary folder, verified, extracted, verified again and
only then moved into place, so an interrupted download never leaves a half-written cache. A download that receives
nothing for ``timeout`` seconds (``$PLUGCONV_DOWNLOAD_TIMEOUT``, default 10) is abandoned; every failure is a
``DataIntegrityError`` that names the missing files and the cause, and leaves no temporary or empty folder behind
(the temporary folder of a download killed outright is removed by the next attempt).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from ._validate import check_float

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


DOWNLOAD_TIMEOUT = 10.0  # seconds without a byte from the server before a download is abandoned


class DataIntegrityError(RuntimeError):
    """A dataset file is missing, truncated or corrupt, or could not be downloaded. The message is one line that
    names the files and the cause; ``folder`` is the dataset folder it is about (None if not known)."""

    def __init__(self, message: str, folder: Optional[Path] = None):
        super().__init__(message)
        self.folder = folder


def download_timeout(timeout: Optional[float] = None) -> float:
    """Seconds a download may go without receiving anything: ``timeout``, else ``$PLUGCONV_DOWNLOAD_TIMEOUT``, else
    ``DOWNLOAD_TIMEOUT``."""
    if timeout is None:
        env = os.environ.get("PLUGCONV_DOWNLOAD_TIMEOUT")
        if not env:
            return DOWNLOAD_TIMEOUT
        try:
            timeout = float(env)
        except ValueError:
            raise ValueError(f"PLUGCONV_DOWNLOAD_TIMEOUT={env!r} must be a number of seconds") from None
        name = "PLUGCONV_DOWNLOAD_TIMEOUT"
    else:
        name = "timeout"
    return check_float(name, timeout, min_value=0.0, min_inclusive=False)


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


def _root_origin(root) -> str:
    """Where the data root came from, for messages that should not print a machine's paths."""
    if root is not None:
        return "root="
    return "$PLUGCONV_DATA" if os.environ.get("PLUGCONV_DATA") else "the library's cache folder"


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


def process_alive(pid: int) -> bool:
    """True if a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


def _remove_stale_downloads(root: Path) -> None:
    """Remove the temporary folders of downloads whose process is gone (killed before its ``finally`` ran).
    A folder is named ``.download-<pid>-<random>``; one without a readable pid is from an older version."""
    for tmp in root.glob(".download-*"):
        pid = tmp.name.split("-")[1] if tmp.name.count("-") >= 2 else ""
        if tmp.is_dir() and not (pid.isdigit() and process_alive(int(pid))):
            shutil.rmtree(tmp, ignore_errors=True)


def _fetch(url: str, dest: Path, timeout: float, progress: bool) -> None:
    """Stream ``url`` into ``dest``; a read that waits more than ``timeout`` seconds raises ``TimeoutError``."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as f:
        total = int(response.headers.get("Content-Length") or 0) or None
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, unit="B", unit_scale=True, desc="CIFAR-100")
        try:
            while block := response.read(1 << 20):
                f.write(block)
                if bar is not None:
                    bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and dest.stat().st_size != total:
        raise DataIntegrityError(f"the download ended after {dest.stat().st_size} of {total} bytes")


def _download_failure(err: BaseException, url: str, timeout: float) -> str:
    host = urllib.parse.urlsplit(url).netloc or url
    reason = err.reason if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError) \
        else err
    if isinstance(reason, TimeoutError):
        return (f"no answer from {host} for {timeout:g} s (set PLUGCONV_DOWNLOAD_TIMEOUT or timeout= to wait longer, "
                "or check the network/proxy)")
    return f"{host}: {str(reason) or type(reason).__name__}"


def download_cifar100(root=None, url: Optional[str] = None, progress: bool = True,
                      timeout: Optional[float] = None) -> Path:
    """Fetch and verify the official archive, then move the three files into ``<root>/cifar-100-python``.

    ``timeout``: seconds without receiving anything before giving up (see ``download_timeout``). Raises
    ``DataIntegrityError`` on any failure (network, timeout, truncated or corrupt archive); the temporary folder
    and any folder this call created are removed, so a failure leaves the root as it was.
    """
    url = CIFAR100_URL if url is None else url
    timeout = download_timeout(timeout)
    root = data_root(root)
    created = [d for d in (root, *root.parents) if not d.exists()][::-1]  # outermost first
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_downloads(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".download-{os.getpid()}-", dir=root))
    ok = False
    try:
        archive = tmp / "cifar-100-python.tar.gz"
        try:
            _fetch(url, archive, timeout, progress)
        except (OSError, http.client.HTTPException) as err:  # URLError, TimeoutError, ConnectionError, ...
            raise DataIntegrityError(f"the download failed: {_download_failure(err, url, timeout)}") from err
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
        ok = True
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not ok:
            for d in reversed(created):  # innermost first; stops at the first folder that is not empty
                try:
                    d.rmdir()
                except OSError:
                    break


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

    def fingerprint(self) -> dict:
        """What identifies the data a run trains on (checkpoints must not resume on other data): the source, its
        files' md5 and the md5 of the tensors themselves (which also tells subsets and synthetic seeds apart)."""
        h = hashlib.md5()
        for t in (self.train_x, self.train_y, self.test_x, self.test_y):
            h.update(t.detach().cpu().contiguous().numpy())
        return {"source": self.source, "md5": dict(self.md5), "tensors_md5": h.hexdigest(),
                "train_images": len(self.train_y), "test_images": len(self.test_y), "num_classes": self.num_classes}

    def describe(self) -> str:
        return (f"{self.source}: {len(self.train_y)} train / {len(self.test_y)} test images, "
                f"{self.num_classes} classes" + (f", from {self.root}" if self.root else ""))


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


_LOADED: dict = {}


def load_cifar100(root=None, download: bool = True, progress: bool = True,
                  timeout: Optional[float] = None) -> Dataset:
    """CIFAR-100 from ``<root>/cifar-100-python`` (verified by md5 first), downloading it if allowed (``timeout``:
    see ``download_cifar100``).

    Raises ``DataIntegrityError`` naming each missing or corrupt file, and why it could not be fetched, when the data
    cannot be made intact.
    """
    origin = _root_origin(root)
    root = data_root(root)
    folder = root / FOLDER
    key = str(folder.resolve())
    stamp = tuple((folder / n).stat().st_mtime_ns if (folder / n).exists() else None for n in FILES)
    if key in _LOADED and _LOADED[key][0] == stamp:
        return _LOADED[key][1]
    problems = check_files(folder)
    if problems:
        listing = "; ".join(f"{n}: {p}" for n, p in problems.items())
        where = f"CIFAR-100 ({FOLDER}/ under {origin})"
        if not download:
            raise DataIntegrityError(
                f"{where} is not intact ({listing}). Point PLUGCONV_DATA (or root=) at the folder that contains "
                f"{FOLDER}/, or call load_cifar100(download=True) to fetch {CIFAR100_URL}.", folder)
        print(f"{where} is not intact ({listing}); downloading the official archive.")
        try:
            download_cifar100(root, progress=progress, timeout=timeout)
        except DataIntegrityError as err:
            raise DataIntegrityError(f"{where} is not intact ({listing}) and could not be fetched: {err}",
                                     folder) from err
        problems = check_files(folder)
        if problems:
            raise DataIntegrityError(f"{where} is still not intact after download: {problems}", folder)
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
