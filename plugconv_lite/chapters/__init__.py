"""One file per chapter: what each chapter adds to the library's machinery.

``se.py`` belongs to ``chapters/01_se.ipynb``: it registers the chapter's experiment variants
(``experiments.register_experiment``) and its exercises (``exercises.exercise`` / ``exercises.solution``).
Importing this package imports every file in it, so adding a chapter means adding a file: no shared list changes.
"""
import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_info.name}")
