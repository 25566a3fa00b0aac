import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/contract.py

# tests never touch the user's cache: checkpoints and smoke records go to a per-session folder
os.environ.setdefault("PLUGCONV_CACHE", str(ROOT / ".cache" / "pytest"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _data_root():
    from plugconv_lite.data import cifar100_available, data_root
    for cand in (os.environ.get("PLUGCONV_DATA"), ROOT.parent / "shared" / "data"):
        if cand and cifar100_available(cand):
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def cifar_root():
    root = _data_root()
    if root is None:
        pytest.skip("CIFAR-100 is not present (set PLUGCONV_DATA to the folder holding cifar-100-python/)")
    return root


@pytest.fixture(scope="session")
def cifar(cifar_root):
    from plugconv_lite.data import load_cifar100
    return load_cifar100(cifar_root, download=False)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)


def pytest_terminal_summary(terminalreporter):
    """Print how long each page of the book build took to execute, slowest first."""
    times = getattr(sys.modules.get("test_book"), "EXECUTION_TIMES", None) or {}
    if times:
        terminalreporter.write_sep("-", "book: notebook execution times (s), slowest first")
        for page, secs in sorted(times.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{secs:7.1f}  {page}")
        terminalreporter.write_line(f"{sum(times.values()):7.1f}  total")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser():
    """One Chromium for the whole session: a second ``sync_playwright`` opened while the first is alive fails
    ("Sync API inside the asyncio loop"), so every browser test shares this one."""
    if not Path(CHROMIUM).exists():
        # .ci/setup installs Chromium, so its absence is a broken set-up, not a reason to skip the browser checks
        if os.environ.get("PLUGCONV_NO_BROWSER"):
            pytest.skip("PLUGCONV_NO_BROWSER is set: the browser checks are skipped")
        pytest.fail("Chromium is not installed (apt-get install chromium; or set PLUGCONV_NO_BROWSER=1 to skip)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                    "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()
