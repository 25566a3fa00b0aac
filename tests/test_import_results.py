"""import-results: records made elsewhere are verified, then merged into the store; refusals say why."""
import copy
import gzip
import json

import pytest
from fake_records import latency_record, pack, record

from plugconv_lite import results
from plugconv_lite.__main__ import main


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("PLUGCONV_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results"


def _write(tmp_path, name, p):
    return results.write_pack(p, tmp_path / name)


def test_pack_roundtrip_is_gzip_json_and_atomic(tmp_path):
    path = _write(tmp_path, "a.json.gz", pack([record()]))
    with gzip.open(path, "rt") as f:
        assert json.load(f)["records"][0]["variant"] == "baseline"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json.gz"]  # no temporary left behind
    assert results.read_pack(path)["records"][0]["seed"] == 0
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(b'{"format": "other"}'))
    with pytest.raises(ValueError, match="not a results pack"):
        results.read_pack(tmp_path / "b.json.gz")
    (tmp_path / "c.json.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a readable results pack"):
        results.read_pack(tmp_path / "c.json.gz")


def test_valid_records_are_written_where_the_experiments_look(tmp_path, store):
    recs = [record("baseline", s, 70 + s) for s in range(3)]
    report = results.import_packs([_write(tmp_path, "p.json.gz", pack(recs))])
    assert len(report["imported"]) == 3 and not report["refused"]
    loaded = results.load(store, profile="full")
    assert sorted(r["seed"] for r in loaded) == [0, 1, 2]
    assert results.load(store, profile="full", chapter="se")  # the baseline lists every chapter it belongs to
    again = results.import_packs([tmp_path / "p.json.gz"])
    assert again["identical"] and not again["imported"] and not again["refused"]


@pytest.mark.parametrize("change, reason", [
    (lambda r: r.update(profile="smoke"), "a smoke-profile run"),
    (lambda r: r["data"].update(source="synthetic"), "synthetic data, not CIFAR-100"),
    (lambda r: r["data"]["md5"].update(train="0" * 32), "data md5s are not CIFAR-100's"),
    (lambda r: r["config"]["model_kw"].update(attn="se"), "config_hash does not match its config"),
    (lambda r: r["code"]["files"].update({"plugconv_lite/train.py": "0" * 40}),
     "code changed since the run: plugconv_lite/train.py changed"),
    (lambda r: r["code"]["files"].update({"plugconv_lite/gone.py": "0" * 40}), "plugconv_lite/gone.py no longer exists"),
    (lambda r: r.pop("code"), "no code fingerprint"),
    (lambda r: r.update(git={"commit": "f" * 40}), "is not in this repository"),
    (lambda r: r.pop("final"), "malformed: no final"),
])
def test_refusals_name_the_reason(tmp_path, store, change, reason):
    bad = record("baseline", 1)
    change(bad)
    report = results.import_packs([_write(tmp_path, "p.json.gz", pack([record("baseline", 0), bad]))])
    assert len(report["imported"]) == 1
    assert len(report["refused"]) == 1 and reason in report["refused"][0][1], report["refused"]
    assert len(list(store.rglob("*.json"))) == 1


def test_recipe_must_be_the_current_profiles(tmp_path, store):
    bad = record("baseline", 0)
    bad["config"]["recipe"]["lr"] = 0.1
    bad["config_hash"] = results.config_hash(bad["config"])  # consistent, but not today's full recipe
    report = results.import_packs([_write(tmp_path, "p.json.gz", pack([bad]))])
    assert "recipe is not the current full profile's" in report["refused"][0][1]


def test_a_different_record_of_the_same_run_is_a_refused_duplicate(tmp_path, store):
    results.import_packs([_write(tmp_path, "a.json.gz", pack([record("baseline", 0, 70.0)]))])
    other = record("baseline", 0, 71.0, date="2026-11-22T00:00:00+00:00")
    report = results.import_packs([_write(tmp_path, "b.json.gz", pack([other]))])
    assert "duplicate" in report["refused"][0][1]
    assert results.load(store)[0]["final"]["test_top1"] == 70.0  # the stored record is untouched
    twice = pack([record("se", 0, 71.0, model_kw={"attn": "se"}), record("se", 0, 72.0, model_kw={"attn": "se"},
                                                                           date="2026-11-23T00:00:00+00:00")])
    report = results.import_packs([_write(tmp_path, "c.json.gz", twice)])
    assert len(report["imported"]) == 1 and "duplicate: a different record of this run is already in the packs" \
        in report["refused"][0][1]


def test_a_prepared_run_needs_its_artefact(tmp_path, store):
    rec = record("se", 0, model_kw={"attn": "se"})
    rec["config"]["prepare"] = {"name": "edo", "config_hash": "abc123"}
    rec["config_hash"] = results.config_hash(rec["config"])
    report = results.import_packs([_write(tmp_path, "p.json.gz", pack([rec]))])
    assert "preparation artefact resnet18__edo__abc123.json is neither in the store" in report["refused"][0][1]
    art = {"kind": "prepare", "prepare": "edo", "profile": "full", "backbone": "resnet18",
           "config": {"recipe": rec["config"]["recipe"]}, "output": {"model_kw": {}}, "data": rec["data"],
           "code": rec["code"], "date": rec["date"]}
    art["config_hash"] = results.config_hash(art["config"])
    rec["config"]["prepare"]["config_hash"] = art["config_hash"]
    rec["config_hash"] = results.config_hash(rec["config"])
    report = results.import_packs([_write(tmp_path, "q.json.gz", pack([rec], artefacts=[art]))])
    assert len(report["imported"]) == 2 and not report["refused"]
    assert (store / "cifar100" / "full" / "prepare" / f"resnet18__edo__{art['config_hash']}.json").is_file()


def test_latency_records_must_come_from_a_gpu(tmp_path, store):
    cpu = latency_record("se", model_kw={"attn": "se"}, device={"device_type": "cpu", "device": "CPU"})
    report = results.import_packs([_write(tmp_path, "p.json.gz", pack(latency=[latency_record(), cpu]))])
    assert len(report["imported"]) == 1 and "latency timed on a CPU" in report["refused"][0][1]
    assert results.load_latency(store)[0]["cost"]["latency_ms"] == 1.0


def test_cli_prints_one_line_per_refusal_and_fails(tmp_path, store, capsys):
    smoke = copy.deepcopy(record("baseline", 1))
    smoke["profile"] = "smoke"
    folder = tmp_path / "packs"
    results.write_pack(pack([record("baseline", 0)]), folder / "a.json.gz")
    results.write_pack(pack([smoke]), folder / "b.json.gz")
    assert main(["import-results", str(folder), "--dry-run"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("refused resnet18__baseline__") and "smoke-profile" in out[0]
    assert out[-1] == "would import 1, already in the store 0, refused 1"
    assert not store.exists()  # a dry run writes nothing


def test_a_shared_reference_row_counts_for_every_chapter_that_registers_it(tmp_path):
    """SE is the reference row of the SE chapter and of the attention chapters: run once (filed under the chapter
    that asked first), its record belongs to every chapter whose variant has the same name and configuration; a
    run of that name with another configuration does not."""
    from plugconv_lite import experiments

    def put(rec):
        results.write(rec, results.record_path(tmp_path, "cifar100", "full", "resnet18", rec["variant"],
                                               rec["config_hash"], rec["seed"]))

    put(record("baseline", chapters=["se"]))
    put(record("se", model_kw={"attn": "se"}, chapters=["se"]))
    put(record("se", seed=1, model_kw={"attn": "se", "attn_kw": {"reduction": 4}}, chapters=["se"]))
    got = {(r["variant"], r["seed"]) for r in experiments.chapter_records("cbam", store=tmp_path)}
    assert got == {("baseline", 0), ("se", 0)}  # the reduction-4 run is another configuration: not cbam's row
    assert {r["variant"] for r in experiments.chapter_records("pyconv", store=tmp_path)} == {"baseline"}
