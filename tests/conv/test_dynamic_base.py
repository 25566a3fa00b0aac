"""What every dynamic convolution builds on: the batch folded into the groups of one convolution, and the
annealed temperature."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from plugconv_lite.conv._dynamic import AnnealedTemperature, per_sample_conv, temperature_at


@pytest.mark.parametrize("groups,stride,dilation,channels_last", [(1, 1, 1, False), (2, 2, 1, False),
                                                                   (1, 1, 2, True), (4, 2, 1, True)])
def test_per_sample_conv_equals_a_loop_over_the_samples(groups, stride, dilation, channels_last):
    torch.manual_seed(0)
    B, C, O = 3, 8, 12
    x = torch.randn(B, C, 9, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    W = torch.randn(B, O, C // groups, 3, 3, dtype=torch.float64)
    b = torch.randn(B, O, dtype=torch.float64)
    y = per_sample_conv(x, W, b, stride, dilation, dilation, groups)
    for i in range(B):
        alone = F.conv2d(x[i:i + 1], W[i], b[i], stride, dilation, dilation, groups)
        torch.testing.assert_close(y[i:i + 1], alone, rtol=0, atol=1e-12)


def test_per_sample_conv_at_batch_one_is_the_plain_convolution():
    torch.manual_seed(0)
    x, W = torch.randn(1, 4, 6, 6), torch.randn(1, 5, 4, 3, 3)
    torch.testing.assert_close(per_sample_conv(x, W, None, 1, 1), F.conv2d(x, W[0], None, 1, 1))


class _Tempered(AnnealedTemperature, nn.Module):
    def __init__(self, temperature=30.0, anneal=0.1):
        super().__init__()
        self._init_temperature(temperature, anneal)


def test_temperature_schedule_at_start_end_of_annealing_and_end():
    m = _Tempered(30.0, 0.1)
    assert float(m.T) == 30.0  # a fresh module is at p = 0
    m.set_progress(0.05)
    assert float(m.T) == pytest.approx(15.5)  # halfway down the linear ramp: 1 + 29 / 2
    m.set_progress(0.1)
    assert float(m.T) == 1.0
    m.set_progress(1.0)
    assert float(m.T) == 1.0
    assert temperature_at(0.5, 30.0, 0.0) == 1.0  # anneal = 0: no annealing at all
    assert "T" in dict(m.named_buffers())  # saved with the model


@pytest.mark.parametrize("kwargs,name", [(dict(temperature=0.5), "temperature"), (dict(anneal=1.5), "anneal"),
                                         (dict(anneal=-0.1), "anneal")])
def test_bad_schedule_raises_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}="):
        _Tempered(**kwargs)


def test_progress_outside_zero_one_raises():
    with pytest.raises(ValueError, match=r"^p=1\.5 must be <= 1"):
        _Tempered().set_progress(1.5)
