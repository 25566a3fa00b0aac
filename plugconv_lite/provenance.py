"""Which library code a run depended on, so that a record can be checked against the code it is merged into.

A results record made on another machine (a lent GPU, a cluster node) is imported only if the code that produced it
is the code in the repository now, for the files that can change what the run computes. Those files are:

* the source files of every class in the trained network (each module's class and its bases inside the library),
* the training loop, the data pipeline and augmentation, the recipe and the measurement (``train.py``,
  ``data.py``, ``profiles.py``, ``measure.py``),
* for a prepared variant, the file of its preparation step (e.g. ``edo.py``),

each closed over the library modules it imports. A run records ``{relative path: sha1}`` of exactly these files
(``fingerprint``); ``check`` compares them with the files on disk. Everything else (plots, widgets, exercises, the
command line, the campaign machinery, a new module added elsewhere) may change without invalidating a record, and
the variant's own definition (its kwargs, the recipe's values, the data sizes) is covered by the record's
``config_hash``, which the import recomputes. Git commits are kept as provenance but are not required: the device
a campaign runs on may receive the working tree without its ``.git``.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
from pathlib import Path
from typing import Iterable, Optional

import torch.nn as nn

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name
CORE = ("train.py", "data.py", "profiles.py", "measure.py")


def _rel(path: Path) -> str:
    return Path(path).resolve().relative_to(PACKAGE_DIR.parent).as_posix()


def _module_file(dotted: str) -> Optional[Path]:
    """The file of library module ``plugconv_lite.a.b`` (``a/b.py``, or ``a/b/__init__.py`` for a package)."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(path: Path) -> set[Path]:
    """Library files that ``path`` imports (relative and absolute imports of this package, top level or not)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = _rel(path)[:-3].split("/")[:-1]  # the package a relative import starts from, e.g. ["plugconv_lite", "conv"]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = base + (node.module.split(".") if node.module else [])
            else:
                mod = (node.module or "").split(".")
            if mod[0] != PACKAGE:
                continue
            target = _module_file(".".join(mod))
            # `from . import x` / `from .pkg import name`: name may be a submodule
            for alias in node.names:
                sub = _module_file(".".join(mod + [alias.name]))
                if sub is not None:
                    found.add(sub)
                elif target is not None:
                    found.add(target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                f = _module_file(alias.name)
                if f is not None:
                    found.add(f)
    # a package's __init__ only re-exports; depending on `plugconv_lite.conv.base` means depending on base.py
    return {f for f in found if not (f.name == "__init__.py" and f.parent == PACKAGE_DIR)}


def closure(files: Iterable[Path]) -> set[Path]:
    """``files`` and every library file they import, transitively."""
    todo, seen = [Path(f).resolve() for f in files], set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo += [g for g in _imports(f) if g not in seen]
    return seen


def _class_files(model: nn.Module) -> set[Path]:
    files = set()
    for m in model.modules():
        for cls in type(m).__mro__:
            if cls.__module__.split(".")[0] != PACKAGE:
                continue
            try:
                files.add(Path(inspect.getsourcefile(cls)).resolve())
            except (TypeError, OSError):
                pass
    return files


def files_for(model: nn.Module, extra: Iterable = ()) -> list[str]:
    """The library files (relative to the repository root) that define what training ``model`` computes.

    ``extra``: further modules, functions, classes or file paths the run depended on (a preparation step)."""
    roots = _class_files(model) | {PACKAGE_DIR / f for f in CORE}
    for obj in extra:
        roots.add(Path(obj) if isinstance(obj, (str, Path)) else Path(inspect.getsourcefile(obj)))
    return sorted(_rel(f) for f in closure(roots))


def file_sha(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def fingerprint(model: nn.Module, extra: Iterable = ()) -> dict:
    """``{"files": {path: sha1}, "sha": sha1 over them}`` for ``files_for(model, extra)``."""
    root = PACKAGE_DIR.parent
    files = {p: file_sha(root / p) for p in files_for(model, extra)}
    blob = "".join(f"{p}\0{h}\n" for p, h in sorted(files.items()))
    return {"files": files, "sha": hashlib.sha1(blob.encode()).hexdigest()}


def check(code: Optional[dict], root: Optional[Path] = None) -> list[str]:
    """Problems with a record's ``code`` fingerprint against the files under ``root`` (default: this library's
    checkout): one string per changed or missing file; empty if the code is unchanged."""
    if not code or not isinstance(code.get("files"), dict) or not code["files"]:
        return ["no code fingerprint in the record"]
    root = Path(root) if root is not None else PACKAGE_DIR.parent
    problems = []
    for rel, sha in sorted(code["files"].items()):
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel} no longer exists")
        elif file_sha(path) != sha:
            problems.append(f"{rel} changed")
    return problems
