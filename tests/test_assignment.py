"""Course assignments (otter-grader): the generator's notebooks and autograder, and the chapters' exercises.

The end-to-end tests (``slow``) build the Foundations page's assignment once, execute the student notebook with the
stubs, and grade the solution notebook and a one-line-library-call copy with ``otter run``.
"""
import inspect
import json
import math
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite import exercises
from plugconv_lite.assignment import (GRADING_SKIP_TAG, REMOVE_TAG, chapter_notebooks, make_assignment,
                                      notebook_exercises)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = chapter_notebooks(ROOT)
WITH_EXERCISES = [stem for stem, path in NOTEBOOKS.items() if notebook_exercises(path)]
PAGE = "foundations_arithmetic"
SEED = 987654321  # the tests' "secret" seed, so they can look for it


def _cells(path):
    return json.loads(Path(path).read_text())["cells"]


def _src(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _tagged_page(tmp):
    """The Foundations page with its library-source cell (the answer to exercise 2) tagged assignment-remove."""
    nb = json.loads(NOTEBOOKS[PAGE].read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and _src(cell).strip() == "viz.source(receptive_field)":
            tags = cell.setdefault("metadata", {}).setdefault("tags", [])
            if REMOVE_TAG not in tags:
                tags.append(REMOVE_TAG)
    path = Path(tmp) / f"{PAGE}.ipynb"
    path.write_text(json.dumps(nb))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("otter")
    tmp = tmp_path_factory.mktemp("assignment")
    return make_assignment(str(_tagged_page(tmp)), tmp / "dist", seed=SEED, run_tests=False,
                           library="plugconv-lite")


def _env():
    """Subprocesses and kernels import this checkout's library, on the smoke profile."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PLUGCONV_PROFILE="smoke", PYTHONPATH=path)


# --- the chapters' exercises ------------------------------------------------------------------------------------

@pytest.mark.parametrize("stem", WITH_EXERCISES)
def test_every_notebook_exercise_is_registered(stem):
    names = [name for name, _ in notebook_exercises(NOTEBOOKS[stem])]
    assert names and len(set(names)) == len(names), names
    assert [n for n in names if n not in exercises.EXERCISES] == []


@pytest.mark.parametrize("stem", WITH_EXERCISES)
def test_every_notebook_exercise_has_a_solution(stem):
    names = [name for name, _ in notebook_exercises(NOTEBOOKS[stem])]
    assert [n for n in names if exercises.EXERCISES[n].solution is None] == []


def test_notebook_exercises_reads_the_check_calls():
    assert notebook_exercises(NOTEBOOKS[PAGE]) == [("stack_cost", "stack_cost"),
                                                  ("receptive_field", "receptive_field_of")]


# --- the generator ------------------------------------------------------------------------------------------------

def test_student_notebook_has_the_stubs_and_no_answers(built):
    page = {_src(c) for c in _cells(NOTEBOOKS[PAGE]) if c["cell_type"] == "code"}
    cells = _cells(built.student)
    code = [_src(c) for c in cells if c["cell_type"] == "code"]
    for name, fn in notebook_exercises(NOTEBOOKS[PAGE]):  # the page's stub cells, unchanged
        stub = next(s for s in page if f'exercises.check("{name}"' in s)
        assert stub in code and f'grader.check("{name}")' in code
    assert "viz.source(receptive_field)" not in code  # tagged assignment-remove
    assert all(c.get("outputs", []) == [] for c in cells)
    first = next(c for c in cells if c["cell_type"] == "code")  # the Colab setup, still first
    assert "google.colab" in _src(first) and "remove-cell" in first["metadata"]["tags"]
    assert "otter.Notebook" in _src(next(c for c in cells[cells.index(first) + 1:] if c["cell_type"] == "code"))
    for solution in ("weights = O * (C // groups)", "jump *= stride"):
        assert not any(solution in s for s in code)
    assert any(GRADING_SKIP_TAG in c["metadata"].get("tags", []) and "pl.explore" in _src(c) for c in cells)


def test_open_exercises_are_manual_questions(built):
    assert built.questions == ["stack_cost", "receptive_field"]
    assert built.manual == ["exercise_3", "exercise_4"]
    md = [_src(c) for c in _cells(built.student) if c["cell_type"] == "markdown"]
    assert sum("_Type your answer here" in s for s in md) == 2
    for n in (3, 4):  # each open exercise is its own question cell, followed by a response cell
        i = next(i for i, s in enumerate(md) if f"<!-- BEGIN QUESTION -->\n\n**{n}.**" in s)
        assert md[i + 1] == "_Type your answer here, replacing this text._"


def test_solution_notebook_holds_the_solution_sources(built):
    code = "\n".join(_src(c) for c in _cells(built.solution) if c["cell_type"] == "code")
    for fn in (exercises.EXERCISES["stack_cost"].solution, exercises.EXERCISES["receptive_field"].solution):
        body = [line.strip() for line in inspect.getsource(fn).splitlines()[2:] if line.strip()]
        assert all(line in code for line in body), fn.__name__


def test_the_secret_seed_is_only_in_the_autograder(built):
    student_dir = built.student.parent
    assert not any(str(SEED) in p.read_text(errors="ignore") for p in student_dir.rglob("*") if p.is_file())
    student_tests = json.loads(built.student.read_text())["metadata"]["otter"]["tests"]
    assert set(student_tests) == {"stack_cost", "receptive_field"}  # public tests only
    assert all("hidden=True" not in t for t in student_tests.values())
    with zipfile.ZipFile(built.autograder) as z:
        environment = z.read("environment.yml").decode()  # the grading image: CPU torch and the library
        assert "- --extra-index-url https://download.pytorch.org/whl/cpu" in environment
        assert "- plugconv-lite\n" in environment
        for name in built.questions:
            test = z.read(f"tests/{name}.py").decode()
            assert f'exercises.grade({name!r}, ' in test and f"seed={SEED}" in test and "hidden=True" in test
            assert f"exercises.check({name!r}, " in test and "hidden=False" in test


def test_seeds_are_drawn_per_assignment(tmp_path):
    pytest.importorskip("otter")
    seeds = []
    for i in range(2):
        made = make_assignment(PAGE, tmp_path / str(i), run_tests=False, library="plugconv-lite")
        with zipfile.ZipFile(made.autograder) as z:
            seeds.append(re.search(r"seed=(\d+)", z.read("tests/stack_cost.py").decode()).group(1))
    assert seeds[0] != seeds[1] and "0" not in seeds


def test_a_missing_solution_is_named(tmp_path, monkeypatch):
    pytest.importorskip("otter")
    monkeypatch.setattr(exercises.EXERCISES["receptive_field"], "solution", None)
    with pytest.raises(ValueError, match=r"without a @solution: receptive_field .*chapters/foundations\.py"):
        make_assignment(PAGE, tmp_path)
    assert not (tmp_path / PAGE).exists()


def test_a_solution_must_match_the_stub_and_be_self_contained(tmp_path, monkeypatch):
    pytest.importorskip("otter")
    import plugconv_lite.chapters.foundations as foundations
    from plugconv_lite import assignment
    chapter_file = dict(vars(foundations))  # as if written in the chapter file
    exec(compile("def receptive_field_of(stack):\n    return 1\n\n"
                 "def uses_a_helper(layers):\n    return count_params(layers)\n", foundations.__file__, "exec"),
         chapter_file)
    monkeypatch.setattr(exercises.EXERCISES["receptive_field"], "solution", chapter_file["receptive_field_of"])
    monkeypatch.setattr(exercises, "check", lambda *a, **k: exercises.Report("receptive_field", 1))  # "passes"
    with pytest.raises(ValueError, match=r"stub is receptive_field_of\(layers\) but the @solution is "
                                         r"receptive_field_of\(stack\)"):
        make_assignment(PAGE, tmp_path, run_tests=False)
    with pytest.raises(ValueError, match="uses 'count_params' from its chapter file"):
        assignment._solution_imports("receptive_field", chapter_file["uses_a_helper"], {})
    with pytest.raises(ValueError, match=r"uses 'pl' from the library \(plugconv_lite\)"):
        assignment._solution_imports("receptive_field", _uses_pl, {})
    assert assignment._solution_imports("receptive_field", _uses_math_and_F, {"F": "torch.nn.functional"}) == \
        ["import math"]


def _uses_pl(layers):
    return pl.receptive_field(layers)


def _uses_math_and_F(layers):
    return [math.floor(F.relu(x)) for x in layers]


def _wrong_receptive_field(layers):
    return 0


def test_a_wrong_solution_is_caught_before_anything_is_written(tmp_path, monkeypatch):
    pytest.importorskip("otter")
    monkeypatch.setattr(exercises.EXERCISES["receptive_field"], "solution", _wrong_receptive_field)
    with pytest.raises(ValueError, match="the @solution of 'receptive_field' fails its own exercise"):
        make_assignment(PAGE, tmp_path, run_tests=False)
    assert not (tmp_path / PAGE).exists()


def test_the_solution_cell_gives_back_the_stub_and_runs_the_solution():
    """Round trip through otter's own solution stripping, with a multi-line signature and a docstring stub."""
    otter_solutions = pytest.importorskip("otter.assign.solutions")
    from plugconv_lite import assignment
    page = ('x = 1\n\n\ndef receptive_field_of(\n    layers,\n):\n    """Your answer."""\n'
            '    raise NotImplementedError  # your code here\n\n\n'
            'exercises.check("receptive_field", receptive_field_of)\n')
    cell = assignment._solution_cell({"cell_type": "code", "source": page}, "receptive_field",
                                     "receptive_field_of", {})
    student = "\n".join(otter_solutions.replace_solutions(cell["source"].split("\n"), "python"))
    assert student == page
    namespace = {"exercises": exercises}
    exec(cell["source"], namespace)
    assert namespace["receptive_field_of"]([(3, 1, 1), (3, 2, 1), (3, 1, 2)]) == 1 + 2 + 2 + 8


def test_exercise_markers_are_read_in_the_exercises_section_only():
    from plugconv_lite import assignment
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "## Math\n\n**1.** not an exercise"},
                    {"cell_type": "markdown", "metadata": {}, "source": "## Exercises\n\n**1 (auto-checked).** Do it."
                                                                        "\n\n**2.** Think.\n\n## References\n"}]}
    with pytest.raises(ValueError, match="exercise 1 is marked auto-checked but no exercises.check cell follows"):
        assignment._master(nb, "page", 1, "plugconv-lite", False)
    nb["cells"][1]["source"] = "## Exercises\n\n**2.** Think.\n\n## References\n"
    master, questions, manual = assignment._master(nb, "page", 1, "plugconv-lite", False)
    assert (questions, manual) == ([], ["exercise_2"])
    texts = [c["source"] for c in master["cells"]]
    assert "## Math\n\n**1.** not an exercise" in texts and "**2.** Think." in texts and "## References" in texts


def test_the_grading_image_gets_the_library_at_this_commit():
    from plugconv_lite import assignment
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    assert assignment._library_requirement() == \
        f"plugconv-lite @ https://github.com/plugconv-lite/plugconv-lite/archive/{head.stdout.strip()}.zip"


def test_cli_errors_name_the_problem(capsys):
    pytest.importorskip("otter")
    from plugconv_lite.__main__ import main
    for argv, message in ((["assignment", "nope", "--out", "x"], "unknown chapter 'nope'; valid: 01_se"),
                          (["assignment", "testbed", "--out", "x"], "testbed has no auto-checked exercises")):
        with pytest.raises(SystemExit) as err:
            main(argv)
        assert err.value.code == 2 and message in capsys.readouterr().err


def test_the_library_imports_without_otter(monkeypatch, tmp_path):
    code = ("import sys; sys.modules['otter'] = None\n"
            "import plugconv_lite, plugconv_lite.assignment, plugconv_lite.__main__\n"
            "try:\n    plugconv_lite.assignment.make_assignment('foundations_arithmetic', 'x')\n"
            "except ImportError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'plugconv-lite[assign]'" in out.stdout


# --- end to end: the student notebook runs, otter grades --------------------------------------------------------

@pytest.mark.slow
def test_student_notebook_executes_with_the_stubs(built, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient
    for key, value in _env().items():
        monkeypatch.setenv(key, value)
    student = tmp_path / "student"  # a copy: the export cell writes a zip beside the notebook
    shutil.copytree(built.student.parent, student)
    nb = nbformat.read(student / built.student.name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(student)}}).execute()
    outputs = {_src(c): "".join(str(o.get("data", {}).get("text/plain", o.get("text", ""))) for o in c["outputs"])
               for c in nb.cells if c.cell_type == "code"}
    assert not [s for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
                for s in [_src(c)]]
    for name, _ in notebook_exercises(NOTEBOOKS[PAGE]):
        stub = next(s for s in outputs if f'exercises.check("{name}"' in s)
        assert "not attempted" in outputs[stub]
        assert "not attempted" in outputs[f'grader.check("{name}")'], outputs[f'grader.check("{name}")']


def _otter_run(notebook, autograder, out):
    out.mkdir()
    proc = subprocess.run([sys.executable, "-m", "otter", "run", "--no-logo", "-a", str(autograder), "-o", str(out),
                           str(notebook)], capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {t["name"]: t for t in json.loads((out / "results.json").read_text())["tests"]}


@pytest.mark.slow
def test_the_solutions_pass_the_autograder(built, tmp_path):
    results = _otter_run(built.solution, built.autograder, tmp_path / "run")
    for name in built.questions:
        assert results[name]["score"] == results[name]["max_score"] == 1, results[name]
    assert results["Public Tests"]["status"] == "passed"


@pytest.mark.slow
def test_a_one_line_library_call_fails_the_autograder(built, tmp_path):
    nb = json.loads(built.solution.read_text())
    library_calls = {  # the page imports pl and receptive_field
        "stack_cost": "return (lambda m: (m.params, m.flops))(pl.measure(nn.Sequential(*(nn.Conv2d(C, O, k, s, "
                      "d * (k - 1) // 2, d, g, bias=False) for C, O, k, s, d, g in layers)), (1, layers[0][0], h, h), "
                      "timing=False))",
        "receptive_field_of": "return receptive_field(layers)[-1][0]",
    }
    for cell in nb["cells"]:
        src = _src(cell)
        for fn, line in library_calls.items():
            if src.startswith(f"def {fn}("):
                src = re.sub(r"# BEGIN SOLUTION NO PROMPT\n.*?# END SOLUTION\n",
                             f"# BEGIN SOLUTION NO PROMPT\n    {line}\n    # END SOLUTION\n", src, flags=re.S)
                cell["source"] = src
    sources = [_src(c) for c in nb["cells"]]
    assert all(sum(line in s for s in sources) == 1 for line in library_calls.values())
    submission = tmp_path / built.solution.name
    submission.write_text(json.dumps(nb))
    results = _otter_run(submission, built.autograder, tmp_path / "run")
    for name in built.questions:
        assert results[name]["score"] == 0, results[name]
        hidden = results[name]["output"].split(f"{name} - 2 result:")[1]  # the hidden test's report
        assert f"{name}: hidden cases fail" in hidden and str(SEED) not in hidden
        assert not re.search(r"case \d|expected", hidden)  # counts only: no case details, no values
    assert results["Public Tests"]["status"] == "failed"
    assert results["Public Tests"]["output"].count("calls the library's own implementation") == 2
