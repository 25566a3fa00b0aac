"""Notebook hygiene, checked without executing anything (the book build executes them)."""
import json
import re
from pathlib import Path

import pytest
import yaml

from plugconv_lite import colab, experiments

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted([*ROOT.glob("chapters/*.ipynb"), *ROOT.glob("book/*.ipynb")])
CHAPTERS = sorted(ROOT.glob("chapters/*.ipynb"))
STANDARD = ["## Math", "## Implementation", "## Verification", "## Explore", "## Experiment", "## Cost",
            "## Pitfalls", "## Exercises", "## References"]


def _cells(path, kind=None):
    nb = json.loads(path.read_text())
    return [c for c in nb["cells"] if kind is None or c["cell_type"] == kind]


def _text(path, kind=None):
    return "\n".join("".join(c["source"]) for c in _cells(path, kind))


def _toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        for ch in part["chapters"]:
            files.append(ch["file"])
            files += [s["file"] for s in ch.get("sections", [])]
    return files


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    for cell in _cells(path, "code"):
        assert not cell.get("outputs") and cell.get("execution_count") is None, f"{path.name} has outputs"


def test_chapter_files_are_named_nn_module():
    for path in CHAPTERS:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), path.name


def test_every_notebook_is_in_the_toc_and_every_toc_file_exists():
    files = _toc_files()
    for path in NOTEBOOKS:
        assert str(path.relative_to(ROOT).with_suffix("")) in files, f"{path} is not in _toc.yml"
    for f in files:
        assert any((ROOT / f).with_suffix(s).exists() for s in (".ipynb", ".md")), f


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_follows_the_standard(path):
    md, code = _text(path, "markdown"), _text(path, "code")
    for heading in STANDARD:
        assert heading in md, f"{path.name} lacks the section '{heading}'"
    assert "viz.source(" in code, "the implementation is shown from the library's source"
    assert "explore(" in code, "a kernel-free widget"
    assert "experiments.chapter_report(" in code, "the experiment"
    assert "exercises.check(" in code, "at least one auto-checked exercise"
    assert md.count("**1") and md.count("**2"), "at least two exercises"
    assert "{footcite}" in md and "{footbibliography}" in md, "bibtex citations, listed at the end of the page"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_experiment_is_registered(path):
    for name in re.findall(r"chapter_report\(\"([a-z0-9_]+)\"", _text(path, "code")):
        assert name in experiments.EXPERIMENTS, f"{path.name} reports unregistered experiment {name!r}"


def _repository_url():
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_is_the_canonical_colab_cell(path):
    """Every notebook starts (before any other code) with the one Colab cell, for the configured repository, hidden
    on the site. A new chapter copies it exactly: the set-up logic lives in plugconv_lite.colab, not here."""
    first = _cells(path, "code")[0]
    canonical = colab.first_cell(_repository_url())
    assert "".join(first["source"]) == canonical, (
        f"{path.name}: the first code cell must be exactly plugconv_lite.colab.first_cell(url):\n{canonical}")
    assert first["metadata"].get("tags") == colab.FIRST_CELL_TAGS, f"{path.name}: tag the first cell remove-cell"
    assert f'"{_repository_url()}"' in canonical  # the URL comes from _config.yml, and from nowhere else


def test_the_readme_names_only_the_configured_repository():
    url = _repository_url()
    slug = url.removeprefix("https://github.com/")
    readme = (ROOT / "README.md").read_text()
    found_any = re.findall(r"(?:github\.com|colab\.research\.google\.com/github)/([\w.-]+/[\w-]+)", readme)
    assert found_any, "README.md should say where the repository is"
    for found in found_any:
        assert found == slug, f"README.md names github.com/{found}; _config.yml's repository is {url}"
