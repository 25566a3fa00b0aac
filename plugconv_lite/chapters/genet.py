"""GENet, group ensemble (chapters/30_genet.ipynb): the chapter's experiment, its member-accuracy report and its
exercises."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# G = 4 members in layer4, the largest member count the authors' follow-up code has a ResNet widening factor for
# (1.85), so the ensemble-vs-member comparison has the most members. At width 64 that factor leaves the network 15%
# smaller in parameters (5% in FLOPs; the chapter computes both); f = 2.1 brings both within 2% of the plain
# ResNet-18 (the grouped stage's weights scale as f^2 / G, so f is about sqrt(G)), which compares the ensemble with
# the single network at equal cost without a separate control run.
GENET = Variant("genet", {"ensemble": 4, "ensemble_widen": 2.1},
                note="GENet: layer4 as 4 grouped members (x2.1 wide: the plain net's parameters and FLOPs), "
                     "grouped classifier, trained on the mean of the member cross-entropies")
register_experiment("genet", [BASELINE, GENET])


def member_table(records: list[dict]):
    """One row per GENet record: the ensemble's top-1 and each member's (from the record's ``final``), the mean
    and best member, and the ensemble's gain over the best member."""
    import pandas as pd

    rows = []
    for r in records:
        final = r["final"]
        members = sorted((k for k in final if k.startswith("test_top1_member")), key=lambda k: int(k[16:]))
        if not members:
            continue
        accs = [final[k] for k in members]
        row = {"variant": r["variant"], "seed": r["seed"], "ensemble": final["test_top1"]}
        row.update({f"m{k[16:]}": final[k] for k in members})
        row.update({"mean member": sum(accs) / len(accs), "ens. - best": final["test_top1"] - max(accs)})
        rows.append(row)
    return pd.DataFrame(rows).set_index(["variant", "seed"]).round(2) if rows else None


def members_report(chapter: str = "genet") -> None:
    """The Experiment section's second table: ensemble vs member top-1 of the active profile's run (labelled when it
    is the smoke profile; read from the store ``chapter_report`` just wrote, so nothing is loaded or trained again)
    and of the full-profile records, where they exist."""
    from IPython.display import Markdown, display

    from .. import results as store_mod
    from ..experiments import chapter_records, code_sha
    from ..profiles import profile

    prof = profile()
    store = store_mod.default_store(prof.name)
    active = [r for d in (sorted(p.name for p in store.iterdir() if p.is_dir()) if store.is_dir() else [])
              for r in store_mod.load(store, profile=prof.name, chapter=chapter, dataset=d)]
    if prof.name not in store_mod.COMMITTED_PROFILES:   # the cache holds runs of older code too: this code's only
        active = [r for r in active if r.get("code_sha") == code_sha()]
    table = member_table(active)
    label = ("SMOKE profile (1,000 training images, one epoch): these numbers show that the members' accuracies "
             "are recorded, nothing about GENet" if prof.name == "smoke" else f"{prof.name} profile")
    if table is None:
        display(Markdown(f"No GENet record of the {prof.name} profile: run `experiments.chapter_report` first."))
    else:
        display(Markdown(f"**Ensemble vs members, {label}** (top-1, %):"))
        display(table)
    if prof.name == "full":
        return
    full = member_table(chapter_records(chapter))
    if full is None:
        display(Markdown("No full-profile GENet record in `results/` yet: no member accuracies to compare."))
        return
    display(Markdown("**Ensemble vs members, full profile** (`results/`; top-1, %):"))
    display(full)


# Exercise 1: the parameters of a whole GENet ResNet-18 ------------------------------------------------------------

def _params_cases(g):
    cases = [dict(width=64, members=4, widen=1.85, ensemble_from=4, num_classes=100),
             dict(width=16, members=2, widen=1.35, ensemble_from=1, num_classes=10)]
    for _ in range(6):
        members = [2, 3, 4][draw_int(g, 0, 2)]
        cases.append(dict(width=members * draw_int(g, 1, 6), members=members,
                          widen=[1.0, 1.2, 1.35, 1.5, 1.65, 1.85][draw_int(g, 0, 5)],
                          ensemble_from=draw_int(g, 1, 4), num_classes=draw_int(g, 2, 20)))
    return cases


@exercise("genet_params", _params_cases,
          "Parameters of pl.resnet18(num_classes, width, ensemble=members, ensemble_from, ensemble_widen=widen).")
def _genet_params(width, members, widen, ensemble_from, num_classes):
    from ..measure import count_params
    from ..models import resnet18
    return count_params(resnet18(num_classes=num_classes, width=width, ensemble=members,
                                 ensemble_from=ensemble_from, ensemble_widen=widen))


@solution("genet_params")
def genet_params(width, members, widen, ensemble_from, num_classes):
    base = [width, 2 * width, 4 * width, 8 * width]
    widths = [w if s < ensemble_from else members * max(1, round(w * widen / members))
              for s, w in zip((1, 2, 3, 4), base)]
    total = 3 * 9 * width + 2 * width                        # stem conv + BN
    c_in = width
    for s, c in zip((1, 2, 3, 4), widths):
        g = members if s >= ensemble_from else 1
        convs = 9 * c_in * c + 9 * c * c + 2 * 9 * c * c     # block 0: conv1, conv2; block 1: conv1, conv2
        bns = 4 * 2 * c
        if c_in != c or s > 1:                                 # projection shortcut (1x1 conv + BN)
            convs += c_in * c
            bns += 2 * c
        total += convs // g + bns
        c_in = c
    return total + c_in * num_classes + (members * num_classes)   # grouped classifier: C K weights, G K biases


# Exercise 2: the gradient of the boosting objective ---------------------------------------------------------------

def _boost_cases(g):
    cases = []
    for B, G, K in [(3, 2, 4), (5, 3, 6), (1, 4, 3), (4, 1, 5)]:
        cases.append(dict(z=torch.randn(B, G, K, generator=g, dtype=torch.float64),
                          y=torch.randint(0, K, (B,), generator=g)))
    for _ in range(3):
        B, G, K = draw_int(g, 1, 6), draw_int(g, 1, 5), draw_int(g, 2, 9)
        cases.append(dict(z=3 * torch.randn(B, G, K, generator=g, dtype=torch.float64),
                          y=torch.randint(0, K, (B,), generator=g)))
    return cases


@exercise("genet_boosting_grad", _boost_cases,
          "Gradient (B, G, K) of the group-boosting objective (mean over members of the batch-mean CE of the "
          "running sums, earlier members under stop-gradient) with respect to the member logits z.")
def _genet_boosting_grad(z, y):
    from ..models.genet import ensemble_loss
    z = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ensemble_loss(z, y, torch.nn.CrossEntropyLoss(), "boosting"), z)
    return grad


@solution("genet_boosting_grad")
def genet_boosting_grad(z, y):
    B, G, K = z.shape
    running = torch.cumsum(z, dim=1)                           # member g's target: the sum of members 1..g
    residual = torch.softmax(running, dim=2) - F.one_hot(y, K).to(z.dtype)[:, None, :]
    return residual / (B * G)                                  # only member g's own term reaches z_g
