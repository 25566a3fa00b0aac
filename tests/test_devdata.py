"""devdata: the dataset split into parts that fit a device call, reassembled and md5-verified on the other side."""
import hashlib
import os
import random

import pytest

from plugconv_lite import devdata

MIB = devdata.MIB


@pytest.fixture
def folder(tmp_path):
    """A small stand-in for cifar-100-python: image-like bytes (rows repeat, as pixels do) and its FILES map."""
    src = tmp_path / "data" / devdata.FOLDER
    src.mkdir(parents=True)
    rng = random.Random(0)
    files = {}
    for name, n in (("meta", 300), ("test", 40_000), ("train", 160_000)):
        rows = [bytes(rng.randrange(256) for _ in range(32)) for _ in range(50)]
        blob = b"".join(rows[rng.randrange(50)] for _ in range(n // 32)) + b"x" * (n % 32)
        (src / name).write_bytes(blob)
        files[name] = (hashlib.md5(blob).hexdigest(), len(blob))
    return tmp_path / "data", files


def test_split_then_assemble_gives_back_the_same_files(folder, tmp_path):
    data, files = folder
    manifest = devdata.split(data, tmp_path / "dd", max_part=20_000, files=files, progress=False)
    parts = sorted((tmp_path / "dd").glob(f"{devdata.ARCHIVE}.part*"))
    assert len(parts) == len(manifest["parts"]) >= 2 and all(p.stat().st_size <= 20_000 for p in parts)
    assert manifest["archive"]["size"] < sum(s for _, s in files.values())  # compressed
    root = devdata.assemble(tmp_path / "dd", tmp_path / "stash", tmp_path / "out", files=files, progress=False)
    for name in files:
        assert (root / devdata.FOLDER / name).read_bytes() == (data / devdata.FOLDER / name).read_bytes()
    assert [p.name for p in (tmp_path / "out").iterdir()] == [devdata.FOLDER]  # no temporary left behind


def test_received_parts_survive_the_repository_copy_losing_them(folder, tmp_path):
    data, files = folder
    manifest = devdata.split(data, tmp_path / "dd", max_part=20_000, files=files, progress=False)
    names = [p["name"] for p in manifest["parts"]]
    for name in names[1:]:  # the first call carries the manifest and part 1 only
        os.replace(tmp_path / "dd" / name, tmp_path / name)
    found = devdata.receive(tmp_path / "dd", tmp_path / "stash", progress=False)
    assert found[names[0]] == tmp_path / "stash" / names[0] and all(found[n] is None for n in names[1:])
    (tmp_path / "dd" / names[0]).unlink()  # gone from the working tree by the next call
    for name in names[1:]:
        os.replace(tmp_path / name, tmp_path / "dd" / name)
    devdata.assemble(tmp_path / "dd", tmp_path / "stash", tmp_path / "out", files=files, progress=False)
    assert (tmp_path / "out" / devdata.FOLDER / "train").stat().st_size == files["train"][1]


def test_a_corrupt_part_is_named_and_nothing_is_unpacked(folder, tmp_path):
    data, files = folder
    manifest = devdata.split(data, tmp_path / "dd", max_part=20_000, files=files, progress=False)
    bad = tmp_path / "dd" / manifest["parts"][1]["name"]
    blob = bytearray(bad.read_bytes())
    blob[100] ^= 0xFF
    bad.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=f"parts missing or corrupt: {manifest['parts'][1]['name']}"):
        devdata.assemble(tmp_path / "dd", tmp_path / "stash", tmp_path / "out", files=files, progress=False)
    assert not (tmp_path / "out" / devdata.FOLDER).exists()


def test_files_failing_their_md5_are_not_moved_into_place(folder, tmp_path):
    data, files = folder
    devdata.split(data, tmp_path / "dd", max_part=20_000, files=files, progress=False)
    wrong = dict(files, test=("0" * 32, files["test"][1]))
    with pytest.raises(ValueError, match="test.*md5 or size mismatch"):
        devdata.assemble(tmp_path / "dd", tmp_path / "stash", tmp_path / "out", files=wrong, progress=False)
    assert not (tmp_path / "out" / devdata.FOLDER / "train").exists()  # not even the intact ones


def test_part_size_leaves_room_for_the_working_tree():
    assert devdata.max_part_bytes(6 * MIB) == devdata.CALL_LIMIT - 6 * MIB - devdata.HEADROOM
    assert devdata.max_part_bytes(0) == devdata.PART_CAP  # never above 60 MiB
    with pytest.raises(ValueError, match="no room for a data part"):
        devdata.max_part_bytes(63 * MIB + MIB // 2)


def test_call_sizes_add_tree_manifest_and_part(folder, tmp_path):
    data, files = folder
    devdata.split(data, tmp_path / "dd", max_part=20_000, files=files, progress=False)
    calls = devdata.call_sizes(tmp_path / "dd", tree=5 * MIB)
    m = (tmp_path / "dd" / devdata.MANIFEST).stat().st_size
    assert [c["total"] for c in calls] == [5 * MIB + m + c["part_bytes"] for c in calls] and all(c["fits"] for c in calls)
    assert not any(c["fits"] for c in devdata.call_sizes(tmp_path / "dd", tree=devdata.CALL_LIMIT))


def test_the_working_tree_size_counts_tracked_and_unignored_files_only():
    tree = devdata.tree_bytes()
    assert 0 < tree < devdata.CALL_LIMIT  # .devdata/, .venv and caches are ignored, so they do not travel


def test_split_refuses_an_incomplete_folder(tmp_path):
    with pytest.raises(ValueError, match="not an intact CIFAR-100 folder"):
        devdata.split(tmp_path, tmp_path / "dd", max_part=MIB, progress=False)
