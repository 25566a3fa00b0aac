import hashlib
import io
import os
import pickle
import socket
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np
import pytest
import torch

from plugconv_lite import data
from plugconv_lite.data import DataIntegrityError, DeviceLoader, crop_flip, load_cifar100


# --- the real CIFAR-100 (skipped when absent) --------------------------------------------------------------------

def test_cifar100_counts_and_balance(cifar):
    assert cifar.train_x.shape == (50000, 3, 32, 32) and cifar.train_x.dtype == torch.uint8
    assert cifar.test_x.shape == (10000, 3, 32, 32)
    assert torch.bincount(cifar.train_y, minlength=100).eq(500).all()
    assert torch.bincount(cifar.test_y, minlength=100).eq(100).all()
    assert cifar.train_y.min() == 0 and cifar.train_y.max() == 99
    assert len(cifar.classes) == 100 and cifar.classes[0] == "apple" and cifar.source == "cifar100"


def test_cifar100_channel_statistics_match_the_constants(cifar):
    x = cifar.train_x.float() / 255
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.tensor(data.MEAN), atol=2e-4, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3)), torch.tensor(data.STD), atol=2e-4, rtol=0)


def test_cifar100_files_pass_md5(cifar_root):
    assert data.check_files(cifar_root / data.FOLDER) == {}


def test_subset_is_class_balanced(cifar):
    s = cifar.subset(train=3000, test=1000)
    assert torch.bincount(s.train_y, minlength=100).eq(30).all() and len(s.test_y) == 1000


# --- integrity and download, on a fake miniature archive ---------------------------------------------------------

def _fake_split(n):
    rng = np.random.default_rng(n)
    return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(np.arange(n) % 4),
            "coarse_labels": [0] * n}


@pytest.fixture
def fake_archive(tmp_path, monkeypatch):
    blobs = {"train": pickle.dumps(_fake_split(8)), "test": pickle.dumps(_fake_split(4)),
             "meta": pickle.dumps({"fine_label_names": ["a", "b", "c", "d"]})}
    archive = tmp_path / "fake.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    monkeypatch.setattr(data, "FILES", {n: (hashlib.md5(b).hexdigest(), len(b)) for n, b in blobs.items()})
    monkeypatch.setattr(data, "ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setattr(data, "CIFAR100_URL", archive.as_uri())
    monkeypatch.setattr(data, "_LOADED", {})
    return blobs


def test_missing_files_are_named_without_download(tmp_path, fake_archive):
    with pytest.raises(DataIntegrityError, match="train: missing.*test: missing.*meta: missing"):
        load_cifar100(tmp_path / "root", download=False)


def test_corrupt_file_is_detected_before_unpickling(tmp_path, fake_archive, monkeypatch):
    root = tmp_path / "root"
    load_cifar100(root, download=True, progress=False)
    train = root / data.FOLDER / "train"
    blob = bytearray(train.read_bytes())
    blob[100] ^= 0xFF
    train.write_bytes(bytes(blob))
    unpickled = []
    monkeypatch.setattr(data, "_unpickle", lambda p: unpickled.append(p))
    monkeypatch.setattr(data, "_LOADED", {})
    with pytest.raises(DataIntegrityError, match="train: md5 mismatch"):
        load_cifar100(root, download=False)
    assert unpickled == []


def test_corrupt_or_partial_file_is_redownloaded(tmp_path, fake_archive):
    root = tmp_path / "root"
    (root / data.FOLDER).mkdir(parents=True)
    (root / data.FOLDER / "test").write_bytes(b"partial")
    ds = load_cifar100(root, download=True, progress=False)
    assert data.check_files(root / data.FOLDER) == {}
    assert ds.train_x.shape == (8, 3, 32, 32) and ds.classes == ["a", "b", "c", "d"]
    assert not list(root.glob(".download-*"))


class _BrokenResponse(io.BytesIO):
    """An HTTP response that delivers a few bytes, then loses the connection."""
    headers = {"Content-Length": "1000"}

    def read(self, size=-1):
        if self.tell() == 0:
            return super().read(size)
        raise ConnectionResetError("connection reset by peer")


def test_interrupted_download_leaves_nothing_half_written(tmp_path, fake_archive, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: _BrokenResponse(b"\x1f\x8b partial"))
    with pytest.raises(DataIntegrityError, match="could not be fetched: the download failed: .*connection reset"):
        load_cifar100(root, download=True, progress=False)
    assert not (root / data.FOLDER).exists() and not list(root.glob(".download-*")) and root.is_dir()


def test_archive_with_wrong_md5_is_rejected(tmp_path, fake_archive, monkeypatch):
    monkeypatch.setattr(data, "ARCHIVE_MD5", "0" * 32)
    with pytest.raises(DataIntegrityError, match="fails its md5 check"):
        load_cifar100(tmp_path / "root", download=True, progress=False)
    assert not (tmp_path / "root" / data.FOLDER).exists()


# --- downloads that cannot happen ------------------------------------------------------------------------------------

@pytest.fixture
def silent_server(monkeypatch):
    """A server on the loopback interface that accepts connections and never answers (a proxy that hangs). It stops
    by itself after 30 s, and when the test ends."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.1)
    done, held = threading.Event(), []

    def serve(deadline=time.monotonic() + 30):
        while not done.is_set() and time.monotonic() < deadline:
            try:
                held.append(sock.accept()[0])
            except OSError:  # accept timed out
                pass
        for conn in held:
            conn.close()
        sock.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/cifar-100-python.tar.gz"
    monkeypatch.setattr(data, "CIFAR100_URL", url)
    yield url
    done.set()
    thread.join(5)


def _closed_port_url():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-100-python.tar.gz"  # nobody listens: connection refused at once


def test_download_from_a_server_that_never_answers_times_out(tmp_path, silent_server):
    root = tmp_path / "new" / "root"
    t0 = time.monotonic()
    with pytest.raises(DataIntegrityError, match=r"train: missing.*meta: missing.*no answer from 127.0.0.1:\d+ for "
                                                 r"0.5 s") as err:
        load_cifar100(root, download=True, progress=False, timeout=0.5)
    assert time.monotonic() - t0 < 10
    assert str(tmp_path) not in str(err.value) and "\n" not in str(err.value)  # one line, no machine path
    assert not (tmp_path / "new").exists()  # no empty directory tree left behind


def test_download_timeout_comes_from_the_environment(tmp_path, silent_server, monkeypatch):
    monkeypatch.setenv("PLUGCONV_DOWNLOAD_TIMEOUT", "0.3")
    assert data.download_timeout() == 0.3 and data.download_timeout(2) == 2.0
    t0 = time.monotonic()
    with pytest.raises(DataIntegrityError, match="for 0.3 s"):
        load_cifar100(tmp_path / "root", download=True, progress=False)
    assert time.monotonic() - t0 < 10
    monkeypatch.setenv("PLUGCONV_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="PLUGCONV_DOWNLOAD_TIMEOUT='soon' must be a number of seconds"):
        data.download_timeout()
    monkeypatch.delenv("PLUGCONV_DOWNLOAD_TIMEOUT")
    assert data.download_timeout() == data.DOWNLOAD_TIMEOUT
    with pytest.raises(ValueError, match="timeout=0.0 must be > 0"):
        data.download_timeout(0)


def test_no_network_is_a_data_integrity_error_naming_the_missing_files(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CIFAR100_URL", _closed_port_url())
    (tmp_path / data.FOLDER).mkdir()
    (tmp_path / data.FOLDER / "meta").write_bytes(b"x")
    with pytest.raises(DataIntegrityError, match="train: missing; test: missing; meta: 1 bytes.*could not be fetched: "
                                                 "the download failed: 127.0.0.1.*refused") as err:
        load_cifar100(tmp_path, download=True, progress=False)
    assert err.value.folder == tmp_path / data.FOLDER
    assert sorted(p.name for p in tmp_path.iterdir()) == [data.FOLDER]  # nothing added


def test_killed_download_leftovers_are_removed_by_the_next_attempt(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CIFAR100_URL", _closed_port_url())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".download-{dead.pid}-abc", tmp_path / ".download-old_style"]
    live = tmp_path / f".download-{os.getpid()}-xyz"  # a download still running in this process
    for d in stale + [live]:
        d.mkdir()
        (d / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8b partial")
    with pytest.raises(DataIntegrityError):
        load_cifar100(tmp_path, download=True, progress=False)
    assert sorted(tmp_path.glob(".download-*")) == [live]


def test_smoke_profile_falls_back_to_synthetic_data_quickly(tmp_path, silent_server, monkeypatch):
    from plugconv_lite.experiments import get_data
    from plugconv_lite.profiles import PROFILES
    monkeypatch.setenv("PLUGCONV_DATA", str(tmp_path))
    monkeypatch.setenv("PLUGCONV_DOWNLOAD_TIMEOUT", "0.5")
    t0 = time.monotonic()
    ds = get_data(PROFILES["smoke"].with_(train_images=200, test_images=100))
    assert ds.synthetic and "could not be downloaded" in ds.note and time.monotonic() - t0 < 10
    with pytest.raises(DataIntegrityError, match="colab profile needs CIFAR-100: .*train: missing.*no answer"):
        get_data(PROFILES["colab"])


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("PLUGCONV_DATA", str(tmp_path / "env"))
    assert data.data_root() == tmp_path / "env"
    assert data.data_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("PLUGCONV_DATA")
    monkeypatch.setenv("PLUGCONV_CACHE", str(tmp_path / "cache"))
    assert data.data_root() == tmp_path / "cache" / "data"


def test_synthetic_data_is_announced_loudly(capsys):
    with pytest.warns(UserWarning, match="SYNTHETIC DATA"):
        ds = data.synthetic_cifar100(train=200, test=100)
    assert "SYNTHETIC DATA" in capsys.readouterr().out
    assert ds.synthetic and ds.train_x.shape == (200, 3, 32, 32) and ds.train_x.dtype == torch.uint8


# --- augmentation and batches on the device -----------------------------------------------------------------------

def test_crop_flip_output_is_a_padded_crop_possibly_flipped(rng):
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=rng)
    out = crop_flip(x, torch.Generator().manual_seed(1), pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    kinds = set()
    for i in range(16):
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
                   if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8].flip(-1) if f else
                                  padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert matches, f"image {i} is not a crop of its padded source"
        kinds.update(m[2] for m in matches)
    assert kinds == {0, 1}


def test_crop_flip_is_deterministic_per_generator(rng):
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=rng)
    a = crop_flip(x, torch.Generator().manual_seed(5))
    b = crop_flip(x, torch.Generator().manual_seed(5))
    c = crop_flip(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_device_loader_epochs_are_deterministic_and_cover_the_data():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 32, 32).contiguous()
    y = torch.arange(10)
    loader = DeviceLoader(x, y, batch_size=4, train=True, seed=3)
    assert len(loader) == 2  # drop_last in training
    e0 = torch.cat([yb for _, yb in loader.epoch(0)])
    assert torch.equal(e0, torch.cat([yb for _, yb in loader.epoch(0)]))
    assert not torch.equal(e0, torch.cat([yb for _, yb in loader.epoch(1)]))
    test = DeviceLoader(x, y, batch_size=4, train=False)
    assert torch.equal(torch.cat([yb for _, yb in test.epoch()]), y)
    xb, _ = next(test.epoch())
    expected = (0 - torch.tensor(data.MEAN) * 255) / (torch.tensor(data.STD) * 255)
    torch.testing.assert_close(xb[0, :, 0, 0], expected)
