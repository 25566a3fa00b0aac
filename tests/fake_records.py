"""Full-profile records as the campaign writes them, with made-up numbers, for tests of the import, the campaign's
bookkeeping and the leaderboard (no training: the config, config hash and code fingerprint are the real ones)."""
from plugconv_lite import experiments, provenance, results
from plugconv_lite.data import FILES
from plugconv_lite.profiles import PROFILES

GPU = {"device_type": "cuda", "device": "NVIDIA H200", "device_memory_gb": 139.8}


def variant(name="baseline", model_kw=None):
    return experiments.BASELINE if name == "baseline" and not model_kw else experiments.Variant(name, model_kw or {})


def record(name="baseline", seed=0, top1=70.0, *, model_kw=None, profile="full", chapters=None, concurrency=4,
           latency_ms=None, images_per_s=9000.0, source="cifar100", date="2026-11-21T00:00:00+00:00"):
    v = variant(name, model_kw)
    prof = PROFILES[profile]
    config = experiments.run_config(v, prof, dict(v.model_kw), 100, 50_000, 10_000)
    model = v.build(prof.with_(width=8), 100)  # the fingerprint depends on the classes used, not the width
    return {
        "schema": 1, "chapters": list(chapters or (["baseline", "se"] if name == "baseline" else [name])),
        "profile": profile, "backbone": "resnet18", "variant": name, "note": "", "seed": seed,
        "config_hash": results.config_hash(config), "config": config,
        "final": {"test_top1": top1, "test_top5": top1 + 20, "test_loss": 1.5, "train_loss": 1.2, "train_acc": 80.0},
        "history": [{"epoch": 1, "train_images": 1_500_000, "train_time_s": 1_500_000 / images_per_s}],
        "cost": {"params": 11_000_000 + len(name), "flops": 1_100_000_000, "latency_ms": latency_ms,
                 "latency_iqr_ms": None, "latency_b256_ms": None if latency_ms is None else 40 * latency_ms},
        "throughput": {"train_images_per_s": images_per_s, "compile_s": 40.0, "compiled": True},
        "wall_time_s": 1_500_000 / images_per_s + 45, "train_time_s": 1_500_000 / images_per_s,
        "hardware": dict(GPU), "versions": {"torch": "2.11.0"}, "git": {}, "code": provenance.fingerprint(model),
        "date": date, "campaign": {"concurrency": concurrency, "process_wall_s": 1_500_000 / images_per_s + 70},
        "data": {"source": source, "md5": {n: m for n, (m, _) in FILES.items()} if source == "cifar100" else {},
                 "train_images": 50_000, "test_images": 10_000},
    }


def latency_record(name="baseline", *, model_kw=None, b1=1.0, b256=30.0, device=GPU):
    rec = record(name, model_kw=model_kw)
    return {"schema": 1, "kind": "latency", "profile": "full", "backbone": "resnet18", "variant": name,
            "config_hash": rec["config_hash"], "config": rec["config"], "chapters": rec["chapters"],
            "cost": {"params": rec["cost"]["params"], "flops": rec["cost"]["flops"], "latency_ms": b1,
                     "latency_b256_ms": b256, "latency_dtype": "bfloat16"},
            "hardware": dict(device), "versions": {"torch": "2.11.0"}, "git": {}, "code": rec["code"],
            "date": "2026-11-21T00:00:00+00:00", "data": {"source": "cifar100"}}


def pack(records=(), artefacts=(), latency=()):
    p = results.new_pack({"gpu": GPU["device"]})
    p["records"], p["artefacts"], p["latency"] = list(records), list(artefacts), list(latency)
    return p
