"""GSConv and Slim-neck (chapters/31_gsconv.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, resnet18_overhead, solution
from ..experiments import BASELINE, Variant, register_experiment

GSCONV = Variant("gsconv", {"conv": "gsconv"},
                 note="GSConv (half dense 3x3, half depthwise 5x5, interleaved; BN + Mish inside) in place of every "
                      "3x3 conv of the residual blocks")
# GSConv roughly halves both the parameters and the FLOPs of ResNet-18 at width 64 (chapter 31 computes both, about
# 0.52x each): far beyond the 5% rule, so a plain ResNet-18 narrowed to GSConv's parameter count is the control.
# Narrowing scales a plain ResNet's parameters and FLOPs alike (both ~ width^2), so the one control matches the
# FLOPs within a few percent too (the chapter prints both ratios). VoV-GSCSP as the block (about 0.2x of both) would
# need a control of its own; the chapter leaves that pair to an open exercise to stay inside the page's time budget.
register_experiment("gsconv", [BASELINE, GSCONV, Variant(
    "gsconv_budget", budget_of=GSCONV, budget="params",
    note="control: the plain ResNet-18 narrowed to the GSConv network's parameters")])


# Exercise 1: the parameters GSConv saves in a whole ResNet-18 ------------------------------------------------------

def _saving_cases(g):
    cases = [dict(width=16, dw_kernel_size=5), dict(width=8, dw_kernel_size=3)]
    for _ in range(6):
        cases.append(dict(width=2 * draw_int(g, 1, 24), dw_kernel_size=[1, 3, 5, 7, 9][draw_int(g, 0, 4)]))
    return cases


@exercise("gsconv_saving", _saving_cases,
          "Parameters pl.resnet18(width) loses when GSConv (dw_kernel_size) replaces the 3x3 convs of its blocks "
          "(a positive int: plain minus GSConv).")
def _gsconv_saving(width, dw_kernel_size):
    return -resnet18_overhead("params", width, conv="gsconv", conv_kw={"dw_kernel_size": dw_kernel_size})


@solution("gsconv_saving")
def gsconv_saving(width, dw_kernel_size):
    def saved(C, O):  # dense 3x3 C->O against GSConv: dense 3x3 C->O/2 + BN, depthwise d x d on O/2 + BN
        return 9 * C * O - (9 * C * O // 2 + O + dw_kernel_size ** 2 * O // 2 + O)

    total, C = 0, width
    for O in (width, 2 * width, 4 * width, 8 * width):  # four stages of two blocks, two 3x3 convs each
        total += saved(C, O) + 3 * saved(O, O)
        C = O
    return total


# Exercise 2: move a checkpoint from the paper's shuffle to the YOLOv5 one ------------------------------------------

def _perm_cases(g):
    cases = []
    for n, O, k in [(2, 1, 1), (4, 3, 1), (6, 2, 3), (8, 4, 1), (12, 5, 3)]:
        cases.append(dict(weight=torch.randn(O, n, k, k, generator=g, dtype=torch.float64)))
    for _ in range(3):
        n, O = 2 * draw_int(g, 1, 12), draw_int(g, 1, 6)
        cases.append(dict(weight=torch.randn(O, n, 1, 1, generator=g, dtype=torch.float64)))
    return cases


@exercise("gsconv_paper_to_yolov5", _perm_cases,
          "The weight (O, n, k, k) of the dense conv after a GSConv with n output channels, re-ordered so that the "
          "network computes the same function when that GSConv uses the YOLOv5 common.py shuffle instead of the "
          "interleaving one of models_inPaper.py.")
def _gsconv_paper_to_yolov5(weight):
    from ..conv.gsconv import interleave_halves
    n = weight.shape[1]
    cat = torch.arange(n, dtype=torch.float64).reshape(1, n, 1, 1)  # channel c of cat(x1, DW(x1)) holds c
    paper = interleave_halves(cat[:, : n // 2], cat[:, n // 2:]).flatten().long()  # paper[j]: source of channel j
    yolo = torch.cat((cat.flatten()[0::2], cat.flatten()[1::2])).long()            # yolo[j]: source of channel j
    where_paper = torch.empty(n, dtype=torch.long)
    where_paper[paper] = torch.arange(n)
    return weight[:, where_paper[yolo]]


@solution("gsconv_paper_to_yolov5")
def gsconv_paper_to_yolov5(weight):
    n = weight.shape[1]
    c_ = n // 2
    out = torch.empty_like(weight)
    for j in range(n):                      # YOLOv5 output channel j holds cat channel s ...
        s = 2 * j if j < c_ else 2 * (j - c_) + 1
        p = 2 * s if s < c_ else 2 * (s - c_) + 1  # ... which the paper's shuffle puts at channel p
        out[:, j] = weight[:, p]
    return out
