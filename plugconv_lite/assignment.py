"""Course assignments from a chapter: a student notebook, an autograder and the solution notebook, made with
otter-grader (https://otter-grader.readthedocs.io), an established grader used with Gradescope.

    python -m plugconv_lite assignment 04_psconv --out dist/       # or: all
    otter run -a dist/04_psconv/autograder/04_psconv-autograder_*.zip submission.ipynb

``make_assignment`` turns the chapter's notebook into an otter *master notebook* and runs ``otter assign`` on it:

- every auto-checked exercise (a code cell calling ``exercises.check("name", fn)``, announced by a markdown line
  ``**N (auto-checked).**``) becomes one otter question: the page's stub for the student, the exercise's
  ``@solution`` (from ``plugconv_lite/chapters/<chapter>.py``) in the solution notebook, a public test that is the
  page's self-check (seed 0) and a hidden test, ``exercises.grade(name, fn, seed=<secret>)``, whose seed is drawn
  when the assignment is made and written only into the autograder (hidden cases print counts, never values);
- every open exercise (``**N.**`` in the Exercises section) becomes a manually graded otter question with a
  response cell;
- cells tagged ``assignment-remove`` (``REMOVE_TAG``: cells that reveal an answer, such as the library source of
  what an exercise asks to write) are left out; outputs are stripped; the first cell (Colab setup) stays;
- cells that only display (every top-level statement an expression: widgets, source listings, tables) are tagged
  ``otter_ignore`` so that grading a submission does not re-render them; other cells can carry that tag in the
  chapter to be skipped when grading.

An auto-checked exercise without a ``@solution`` is an error that names it. otter-grader is an optional dependency
(``pip install plugconv-lite[assign]``); the library imports without it.
"""
from __future__ import annotations

import ast
import builtins
import copy
import dis
import glob
import inspect
import io
import json
import re
import secrets
import subprocess
import tempfile
import textwrap
import tokenize
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional, Union

from . import exercises
from .results import repo_root

REMOVE_TAG = "assignment-remove"   # a chapter cell that reveals an answer: left out of the assignment
GRADING_SKIP_TAG = "otter_ignore"  # otter's tag: the autograder does not execute the cell
LIBRARY_URL = "https://github.com/plugconv-lite/plugconv-lite"

_CHECK = re.compile(r"""exercises\.check\(\s*["']([A-Za-z_]\w*)["']\s*,\s*([A-Za-z_]\w*)""")
_MARKER = re.compile(r"^\*\*(\d+)\s*(\(auto-checked\))?\s*\.?\s*\*\*")  # **1 (auto-checked).** / **3.**
_HEADING = re.compile(r"^(#{1,6})\s+(.*)")


def chapter_notebooks(root: Optional[Path] = None) -> dict[str, Path]:
    """The book's notebooks by stem (``01_se``, ``foundations_arithmetic``, ...): ``chapters/*.ipynb`` and
    ``book/*.ipynb`` of the repository (they are not installed with the library)."""
    root = Path(root) if root is not None else repo_root()
    if root is None:
        raise ValueError("the chapter notebooks were not found: run this from a clone of the repository "
                         f"({LIBRARY_URL}); they are not installed with the library")
    return {p.stem: p for d in ("chapters", "book") for p in sorted((root / d).glob("*.ipynb"))}


def notebook_exercises(nb: Union[str, Path, dict]) -> list[tuple[str, str]]:
    """``(exercise name, function name)`` of every ``exercises.check("name", fn)`` call in a notebook's code cells,
    in page order."""
    if not isinstance(nb, dict):
        nb = json.loads(Path(nb).read_text())
    return [m.groups() for cell in nb["cells"] if cell["cell_type"] == "code"
            for m in _CHECK.finditer(_source(cell))]


@dataclass
class AssignmentFiles:
    chapter: str
    student: Path         # the notebook handed out (stubs, no outputs)
    solution: Path        # the solution notebook (the @solution sources in the solution cells)
    autograder: Path      # otter's autograder zip (hidden tests inside): `otter run -a` it, or upload it
    questions: list[str]  # auto-checked exercises, one otter question each
    manual: list[str]     # open exercises, graded by hand


def make_assignment(chapter: str, out: Union[str, Path], *, seed: Optional[int] = None, run_tests: bool = True,
                    library: Optional[str] = None) -> Union[AssignmentFiles, list[AssignmentFiles]]:
    """Write the assignment of ``chapter`` (a notebook stem such as ``04_psconv``, a notebook path, or ``"all"``)
    to ``out/<stem>/``: ``student/<stem>.ipynb``, ``autograder/<stem>.ipynb`` (solutions) and
    ``autograder/<stem>-autograder_<time>.zip``.

    ``seed``: the hidden cases' seed (default: drawn at random; never printed). ``run_tests``: let otter execute
    the solution notebook and check that it scores full marks. ``library``: the pip requirement that installs
    plugconv-lite in the grading image (default: this checkout's commit of the GitHub repository).
    """
    _require_otter()
    if chapter == "all":
        books = {stem: path for stem, path in chapter_notebooks().items() if notebook_exercises(path)}
        problems = [_solution_problems(stem, json.loads(path.read_text())) for stem, path in books.items()]
        if any(problems):
            raise ValueError("\n".join(p for p in problems if p))
        return [make_assignment(str(path), out, seed=seed, run_tests=run_tests, library=library)
                for path in books.values()]
    path = Path(chapter)
    if path.suffix != ".ipynb":
        books = chapter_notebooks()
        if chapter not in books:
            raise ValueError(f"unknown chapter {chapter!r}; valid: {', '.join(books)} or all")
        path = books[chapter]
    nb = json.loads(path.read_text())
    stem = path.stem
    if not notebook_exercises(nb):
        raise ValueError(f"{stem} has no auto-checked exercises (no exercises.check(...) cell)")
    problem = _solution_problems(stem, nb)
    if problem:
        raise ValueError(problem)
    seed = secrets.randbelow(2 ** 31 - 1) + 1 if seed is None else int(seed)
    for name, _ in notebook_exercises(nb):  # the answer key must pass what it is graded with (milliseconds)
        solution = exercises.EXERCISES[name].solution
        for report in (exercises.check(name, solution), exercises.check(name, solution, seed=seed, hidden=True)):
            if not report.passed:
                raise ValueError(f"{stem}: the @solution of {name!r} fails its own exercise: {report}")
    master, questions, manual = _master(nb, stem, seed, library or _library_requirement(), run_tests)
    result = Path(out).resolve() / stem
    with tempfile.TemporaryDirectory(prefix="plugconv-assign-") as tmp:
        master_path = Path(tmp) / f"{stem}.ipynb"
        master_path.write_text(json.dumps(master, indent=1))
        _otter_assign(master_path, result, run_tests)
    zips = sorted((result / "autograder").glob(f"{glob.escape(stem)}-autograder_*.zip"))
    if not zips:
        raise RuntimeError(f"otter assign wrote no autograder zip into {result / 'autograder'}")
    return AssignmentFiles(stem, result / "student" / f"{stem}.ipynb", result / "autograder" / f"{stem}.ipynb",
                           zips[-1], questions, manual)


def _require_otter() -> None:
    try:
        import otter  # noqa: F401
    except ImportError:
        raise ImportError("course assignments need otter-grader: pip install 'plugconv-lite[assign]' "
                          "(or pip install otter-grader)") from None


def _otter_assign(master: Path, result: Path, run_tests: bool) -> None:
    from otter.assign import main as otter_assign
    try:
        otter_assign(str(master), str(result), no_pdfs=True, no_run_tests=not run_tests)
    except RuntimeError as err:  # otter's "Some autograder tests failed in the autograder notebook"
        raise RuntimeError(f"{master.stem}: otter assign failed: {err}") from None


def _library_requirement() -> str:
    """plugconv-lite at this checkout's commit (what the hidden cases were drawn with), else main -- as GitHub's
    source archive, which pip installs without git (otter's setup script does not install git)."""
    ref = "main"
    root = repo_root()
    if root is not None:
        try:
            ref = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                 check=True).stdout.strip() or ref
        except (OSError, subprocess.CalledProcessError):
            pass
    return f"plugconv-lite @ {LIBRARY_URL}/archive/{ref}.zip"


def _solution_problems(stem: str, nb: dict) -> str:
    """What keeps the notebook's auto-checked exercises from being graded (unregistered, no @solution), or ""."""
    found = [name for name, _ in notebook_exercises(nb)]
    unknown = [name for name in found if name not in exercises.EXERCISES]
    if unknown:
        return f"{stem}: the notebook checks exercises that are not registered: {', '.join(unknown)}"
    missing = [name for name in found if exercises.EXERCISES[name].solution is None]
    if missing:
        return (f"{stem}: auto-checked exercises without a @solution: {', '.join(missing)} (register one with "
                f"@exercises.solution in plugconv_lite/chapters/{exercises.EXERCISES[missing[0]].chapter}.py)")
    return ""


# --- the otter master notebook ---------------------------------------------------------------------------------

def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _raw(text: str) -> dict:
    return {"cell_type": "raw", "id": uuid.uuid4().hex[:8], "metadata": {}, "source": text}


def _md(text: str, **meta) -> dict:
    return {"cell_type": "markdown", "id": uuid.uuid4().hex[:8], "metadata": dict(meta), "source": text}


def _code(text: str) -> dict:
    return {"cell_type": "code", "id": uuid.uuid4().hex[:8], "metadata": {}, "source": text, "outputs": [],
            "execution_count": None}


def _tags(cell: dict) -> list:
    return cell.get("metadata", {}).get("tags", [])


def _config(stem: str, library: str, run_tests: bool) -> dict:
    return _raw("# ASSIGNMENT CONFIG\n" + json.dumps({
        "name": stem,
        "requirements": ["--extra-index-url https://download.pytorch.org/whl/cpu", "torch>=2.3", library],
        "init_cell": False,  # ours comes after the Colab setup cell
        "check_all_cell": False,
        "export_cell": {"pdf": False, "run_tests": False,
                        "instructions": "Upload the zip file (or this notebook) to the assignment's autograder."},
        "run_tests": run_tests,
        "tests": {"files": False, "ok_format": False},
        "generate": {"show_stdout": False, "show_hidden": False, "pdf": False},
    }, indent=1))


def _split_markdown(text: str, state: dict) -> list[tuple[str, Optional[int], str]]:
    """A markdown cell as ``(kind, number, text)`` pieces, kind ``"text"``, ``"auto"`` or ``"open"``: inside the
    Exercises section an exercise runs from its marker line to the next marker or heading. ``state["level"]`` is the
    Exercises heading's level while inside that section (it carries over between cells)."""
    pieces, current = [], ["text", None, []]
    for line in text.splitlines(keepends=True):
        heading, marker = _HEADING.match(line), _MARKER.match(line)
        if heading:
            level = len(heading.group(1))
            if state.get("level") and level <= state["level"]:
                state["level"] = None
            if re.match(r"exercises?\b", heading.group(2).strip(), re.IGNORECASE):
                state["level"] = level
        if heading or (marker and state.get("level")):
            pieces.append(current)
            current = ["text", None, []] if heading else ["auto" if marker.group(2) else "open", int(marker.group(1)),
                                                          []]
        current[2].append(line)
    pieces.append(current)
    return [(kind, num, "".join(lines).strip("\n")) for kind, num, lines in pieces if "".join(lines).strip()]


def _header_end(lines: list[str], def_line: int) -> int:
    """Index of the line holding the ``:`` that closes the ``def`` signature starting at ``lines[def_line]``."""
    depth = 0
    text = "".join(lines[def_line:])
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        elif tok.type == tokenize.OP and tok.string == ":" and depth == 0:
            return def_line + tok.start[0] - 1
    raise ValueError("unterminated def")


def _function(source: str, name: str) -> tuple[list[str], int, int, int, ast.FunctionDef]:
    """(lines, first line, line after the header, line after the def, node) of top-level ``def name``."""
    lines = source.splitlines(keepends=True)
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            start = node.lineno - 1
            return lines, start, _header_end(lines, start) + 1, node.end_lineno, node
    raise ValueError(f"no top-level function {name!r}")


def _globals_used(code) -> set[str]:
    names, todo = set(), [code]
    while todo:
        c = todo.pop()
        names |= {i.argval for i in dis.get_instructions(c) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
        todo.extend(k for k in c.co_consts if hasattr(k, "co_code"))
    return names


def _page_imports(cells: list[dict]) -> dict[str, str]:
    """Name -> module bound by the import statements of these code cells (IPython-only cells are skipped)."""
    bound = {}
    for cell in cells:
        try:
            tree = ast.parse(_source(cell))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    bound[a.asname or a.name] = f"{node.module}.{a.name}"
    return bound


def _solution_imports(name: str, fn, page: dict[str, str]) -> list[str]:
    """Imports the solution needs that the page does not make; a solution that uses anything else from its
    chapter file is not self-contained."""
    lines = []
    for g in sorted(_globals_used(fn.__code__)):
        if hasattr(builtins, g):
            continue
        value = fn.__globals__.get(g)
        if not isinstance(value, ModuleType) or value.__name__.split(".")[0] == __package__:
            what = f"the library ({value.__name__})" if isinstance(value, ModuleType) else "its chapter file"
            raise ValueError(f"the @solution of {name!r} uses {g!r} from {what}: a solution must be "
                             "self-contained (Python and torch only)")
        if page.get(g) != value.__name__:
            lines.append(f"import {value.__name__}" if g == value.__name__ else f"import {value.__name__} as {g}")
    return lines


def _solution_cell(cell: dict, name: str, fn_name: str, page: dict[str, str]) -> dict:
    """The page's exercise cell with the stub's body wrapped in otter's PROMPT markers (the student version) and
    the @solution's body in SOLUTION markers (the solution notebook)."""
    solution = exercises.EXERCISES[name].solution
    source = _source(cell)
    try:
        lines, start, body, end, node = _function(source, fn_name)
    except ValueError:
        raise ValueError(f"exercise {name!r}: the cell checks {fn_name!r} but does not define it") from None
    page_sig = (node.name, [a.arg for a in node.args.args])
    sol_sig = (solution.__name__, list(inspect.signature(solution).parameters))
    if page_sig != sol_sig:
        raise ValueError(f"exercise {name!r}: the page's stub is {page_sig[0]}({', '.join(page_sig[1])}) but the "
                         f"@solution is {sol_sig[0]}({', '.join(sol_sig[1])}); they must agree")
    sol_src = textwrap.dedent(inspect.getsource(solution))
    s_lines, _, s_body, s_end, _ = _function(sol_src, solution.__name__)
    indent = " " * node.body[0].col_offset
    stub = "".join(lines[body:end])
    quote = "'''" if '"""' in stub else '"""'
    solved = [*(f"{indent}{i}\n" for i in _solution_imports(name, solution, page)),
              *textwrap.indent(textwrap.dedent("".join(s_lines[s_body:s_end])), indent).splitlines(keepends=True)]
    new = [*lines[start:body], f"{indent}# BEGIN SOLUTION NO PROMPT\n", *solved, f"{indent}# END SOLUTION\n",
           f"{indent}{quote} # BEGIN PROMPT\n", stub.rstrip("\n") + "\n", f"{indent}{quote} # END PROMPT\n"]
    out = copy.deepcopy(cell)
    out["source"] = "".join(lines[:start] + new + lines[end:])
    return out


def _tests(name: str, fn_name: str, seed: int) -> list[dict]:
    public = textwrap.dedent(f'''\
        def test_{name}_self_check({fn_name}):
            from plugconv_lite import exercises
            report = exercises.check("{name}", {fn_name})
            assert report.passed, str(report)
        ''')
    hidden = textwrap.dedent(f'''\
        """ # BEGIN TEST CONFIG
        hidden: true
        """ # END TEST CONFIG
        def test_{name}_hidden({fn_name}):
            from plugconv_lite import exercises
            passed = exercises.grade("{name}", {fn_name}, seed={seed})
            assert passed, "{name}: hidden cases fail"
        ''')
    return [_raw("# BEGIN TESTS"), _code(public), _code(hidden), _raw("# END TESTS")]


def _display_only(cell: dict) -> bool:
    """A code cell whose every top-level statement is an expression (it shows something, binds nothing)."""
    try:
        tree = ast.parse(_source(cell))
    except SyntaxError:
        return False
    return bool(tree.body) and all(isinstance(s, ast.Expr) for s in tree.body) and \
        not any(isinstance(n, ast.NamedExpr) for n in ast.walk(tree))


def _master(nb: dict, stem: str, seed: int, library: str, run_tests: bool) -> tuple[dict, list[str], list[str]]:
    """The otter master notebook of a chapter notebook, with its auto-graded and manual question names."""
    master, questions, manual = [_config(stem, library, run_tests)], [], []
    state, prompt, code_seen = {}, None, []  # prompt: the auto-checked exercise waiting for its check cell
    for cell in (copy.deepcopy(c) for c in nb["cells"] if REMOVE_TAG not in _tags(c)):
        if cell["cell_type"] == "markdown":
            for kind, num, text in _split_markdown(_source(cell), state):
                if kind == "text":
                    master.append(_md(text, **cell.get("metadata", {})))
                elif kind == "open":
                    manual.append(f"exercise_{num}")
                    master += [_raw(f"# BEGIN QUESTION\nname: exercise_{num}\nmanual: true\npoints: 1"), _md(text),
                               _raw("# BEGIN PROMPT"), _md("_Type your answer here, replacing this text._"),
                               _raw("# END PROMPT"), _raw("# END QUESTION")]
                elif prompt is not None:
                    raise ValueError(f"{stem}: exercise {prompt[0]} is marked auto-checked but no exercises.check "
                                     "cell follows it")
                else:
                    prompt = (num, text)
            continue
        if cell["cell_type"] != "code":
            master.append(cell)
            continue
        cell["outputs"], cell["execution_count"] = [], None
        cell["metadata"].pop("execution", None)
        checks = _CHECK.findall(_source(cell))
        if len(checks) > 1:
            raise ValueError(f"{stem}: one cell checks several exercises ({', '.join(n for n, _ in checks)}); give "
                             "each exercise its own cell")
        if checks:
            name, fn_name = checks[0]
            questions.append(name)
            master += [_raw(f"# BEGIN QUESTION\nname: {name}\npoints: 1\nall_or_nothing: true"),
                       *([_md(prompt[1])] if prompt else []),
                       _raw("# BEGIN SOLUTION"), _solution_cell(cell, name, fn_name, _page_imports(code_seen)),
                       _raw("# END SOLUTION"), *_tests(name, fn_name, seed), _raw("# END QUESTION")]
            prompt = None
        elif prompt is not None:
            raise ValueError(f"{stem}: exercise {prompt[0]} is marked auto-checked but the next code cell does not "
                             "call exercises.check")
        else:
            if _display_only(cell) and GRADING_SKIP_TAG not in _tags(cell):
                cell["metadata"].setdefault("tags", []).append(GRADING_SKIP_TAG)
            master.append(cell)
            if not code_seen:  # the Colab setup cell: otter's client comes right after it
                master.append(_code(f'# the autograder\'s checks: grader.check("name") after each exercise\n'
                                    f'import otter\ngrader = otter.Notebook("{stem}.ipynb")'))
        code_seen.append(cell)
    if prompt is not None:
        raise ValueError(f"{stem}: exercise {prompt[0]} is marked auto-checked but no exercises.check cell follows it")
    out = copy.deepcopy(nb)
    out["cells"] = master
    return out, questions, manual
