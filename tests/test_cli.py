"""The command line ends every error it can foresee with one line and a non-zero exit status, before any training."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plugconv_lite import experiments
from plugconv_lite.__main__ import main


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("run_chapter must not be reached")
    monkeypatch.setattr(experiments, "run_chapter", refuse)


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m plugconv_lite: error: "), err
    return err[0]


def test_unknown_variant_names_the_valid_ones(capsys, no_training):
    assert main(["run", "se", "--variants", "typo"]) == 2
    line = _one_error_line(capsys)
    assert "--variants typo: no such variant in se; valid: baseline, se" in line


def test_bogus_profile_from_the_environment(capsys, monkeypatch, no_training):
    monkeypatch.setenv("PLUGCONV_PROFILE", "bogus")
    assert main(["run", "se"]) == 2
    line = _one_error_line(capsys)
    assert "profile='bogus' (from $PLUGCONV_PROFILE) must be one of ['colab', 'full', 'smoke']" in line


@pytest.mark.parametrize("device,match", [("bogus", "device='bogus' is not a device torch knows"),
                                          ("cuda", "device='cuda': CUDA is not available on this machine")])
def test_bad_device(device, match, capsys, monkeypatch, no_training):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("PLUGCONV_PROFILE", "smoke")
    assert main(["run", "se", "--device", device]) == 2
    assert match in _one_error_line(capsys)


def test_variants_of_other_chapters_are_skipped_not_run_empty(capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(experiments, "run_chapter", lambda chapter, *a: ran.append(chapter) or _EmptyTable())
    monkeypatch.setenv("PLUGCONV_PROFILE", "smoke")
    assert main(["run", "se", "pyconv", "--variants", "se"]) == 0
    assert ran == ["se"] and "pyconv: none of the variants ['se']; skipped" in capsys.readouterr().out


class _EmptyTable:
    def drop(self, columns):
        return self

    def to_string(self, index):
        return ""


def test_errors_reach_the_shell_without_a_traceback():
    env = {**os.environ, "PLUGCONV_PROFILE": "bogus", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.pop("PLUGCONV_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "plugconv_lite", "run", "se"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "python -m plugconv_lite: error: profile='bogus' (from $PLUGCONV_PROFILE) must be one of "
        "['colab', 'full', 'smoke']"]
