"""The builder's state threading (models/flow.py): what each option receives, and that nothing else changes."""
import pytest
import torch
import torch.nn as nn

import plugconv_lite as pl
from plugconv_lite.models.flow import Flow


class PoolLinearHead(nn.Module):
    """A head that computes what the plain network computes: pool + linear on the last stage."""

    def __init__(self, channels, num_classes):
        super().__init__()
        self.seen = None
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, stages):
        self.seen = [tuple(s.shape) for s in stages]
        return self.fc(stages[-1].mean(dim=(2, 3)))


class LastBlock(nn.Module):
    """A stage attention that selects the last block's output (what the plain stage returns)."""

    def __init__(self, channels, depth):
        super().__init__()
        self.depth, self.seen = depth, None

    def forward(self, blocks):
        self.seen = [b.detach().clone() for b in blocks]
        return torch.relu(blocks[-1])


class Chain(nn.Module):
    """A connected attention that records what it received and passes on its own tag."""
    uses_flow = True
    log = []

    def __init__(self, channels, prev_channels=None):
        super().__init__()
        self.channels, self.prev_channels = channels, prev_channels
        self.tag = len(Chain.log)
        Chain.log.append(("built", channels, prev_channels))

    def forward(self, x, flow=None):
        got = None if flow is None else flow.attn
        Chain.log.append(("called", self.tag, got))
        if flow is not None:
            flow.attn = self.tag
        return x


def _pair(**options):
    torch.manual_seed(0)
    plain = pl.resnet18(width=8).eval()
    torch.manual_seed(0)
    other = pl.resnet18(width=8, **options).eval()
    return plain, other


def test_network_without_options_has_no_flow_state():
    net = pl.resnet18(width=8)
    assert not net.threads_flow and net.stage_attn is None and net.head is None
    assert not any(k.startswith(("stage_attn", "head")) for k in net.state_dict())


def test_head_receives_every_stage_and_a_plain_equivalent_head_changes_nothing():
    plain, other = _pair(head=PoolLinearHead)
    other.head.fc.load_state_dict(plain.fc.state_dict())
    assert other.fc is None
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(other(x), plain(x), rtol=0, atol=0)
    assert other.head.seen == [(2, 8, 32, 32), (2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4)]


def test_stage_attention_receives_each_blocks_output_before_its_relu():
    plain, other = _pair(stage_attn=LastBlock)
    assert [m.depth for m in other.stage_attn] == [2, 2, 2, 2]
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(other(x), plain(x), rtol=0, atol=0)  # selecting the last block = the plain stage
    blocks = other.stage_attn[3].seen
    assert len(blocks) == 2 and all(b.shape == (2, 64, 4, 4) for b in blocks)
    assert all((b < 0).any() for b in blocks)  # recorded before the ReLU (an in-place ReLU would zero them)


def test_stage_attention_output_replaces_the_stage_output():
    class Zero(LastBlock):
        def forward(self, blocks):
            return torch.zeros_like(blocks[0])
    _, other = _pair(stage_attn=Zero)
    flow = Flow(keep_blocks=True)
    other.features(torch.randn(1, 3, 32, 32), flow)
    assert all(s.abs().sum() == 0 for s in flow.stages)


def test_connected_attention_is_threaded_through_every_block_and_across_stages():
    Chain.log.clear()
    net = pl.resnet18(width=8, attn=Chain, attn_connect=True)
    built = [e for e in Chain.log if e[0] == "built"]
    assert [(c, p) for _, c, p in built] == [(8, None), (8, 8), (16, 8), (16, 16), (32, 16), (32, 32), (64, 32),
                                             (64, 64)]
    Chain.log.clear()
    net(torch.randn(1, 3, 32, 32))
    assert Chain.log == [("called", i, None if i == 0 else i - 1) for i in range(8)]  # the first block: no state


def test_connected_attention_starts_afresh_every_forward():
    Chain.log.clear()
    net = pl.resnet18(width=8, attn=Chain, attn_connect=True)
    x = torch.randn(1, 3, 32, 32)
    net(x)
    Chain.log.clear()
    net(x)
    assert Chain.log[0] == ("called", 0, None)


@pytest.mark.parametrize("kw, match", [
    (dict(attn_connect=True), "attn_connect=True needs an attention"),
    (dict(attn_connect=1, attn="se"), "attn_connect=1"),
    (dict(attn="eca", attn_connect=True), "attn='eca' has no connected form"),
    (dict(stage_attn=LastBlock, block="cg"), "stage_attn=.* needs blocks"),
    (dict(stage_attn_kw={"r": 2}), "stage_attn_kw is given without stage_attn"),
    (dict(head_kw={"r": 2}), "head_kw is given without head"),
    (dict(head=PoolLinearHead, head_kw=[1]), "head_kw=\\[1\\] must be a dict"),
])
def test_bad_options_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        pl.resnet18(width=8, **kw)
