"""The code fingerprint of a run: exactly the library files that define what it computes."""
import shutil

import plugconv_lite as pl
from plugconv_lite import edo, provenance


def test_files_are_the_models_classes_the_training_path_and_their_imports():
    base = set(provenance.files_for(pl.resnet18()))
    assert {"plugconv_lite/models/resnet.py", "plugconv_lite/train.py", "plugconv_lite/data.py",
            "plugconv_lite/profiles.py", "plugconv_lite/registry.py", "plugconv_lite/conv/base.py"} <= base
    assert not {f for f in base if "pyconv" in f or "viz" in f or "widgets" in f or "campaign" in f}
    pyconv = set(provenance.files_for(pl.resnet18(conv="pyconv")))
    assert pyconv - base == {"plugconv_lite/conv/pyconv.py", "plugconv_lite/conv/_layout.py"}
    assert "plugconv_lite/edo.py" in provenance.files_for(pl.resnet18(), extra=[edo.prepare])


def test_check_names_each_changed_or_missing_file(tmp_path):
    code = provenance.fingerprint(pl.resnet18(attn="se"))
    assert provenance.check(code) == []
    root = tmp_path / "copy"
    shutil.copytree(provenance.PACKAGE_DIR, root / "plugconv_lite")
    assert provenance.check(code, root) == []
    (root / "plugconv_lite" / "attention" / "se.py").write_text("# changed\n")
    (root / "plugconv_lite" / "train.py").unlink()
    assert provenance.check(code, root) == ["plugconv_lite/attention/se.py changed",
                                            "plugconv_lite/train.py no longer exists"]
    (root / "plugconv_lite" / "viz.py").write_text("# unrelated\n")  # a file the run did not depend on
    assert len(provenance.check(code, root)) == 2
    assert provenance.check(None) == ["no code fingerprint in the record"]
