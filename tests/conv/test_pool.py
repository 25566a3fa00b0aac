"""The ceil-mode average pooling shared by C2sp and SCConv (conv/_pool.py) is the eager ceil_mode call, bit for bit."""
import pytest
import torch
import torch.nn.functional as F

from plugconv_lite.conv._pool import avg_pool_ceil


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_avg_pool_ceil_is_the_ceil_mode_call_bit_for_bit(dtype, rng):
    for r in [(2, 2), (3, 3), (4, 4), (2, 3)]:
        for h, w in [(1, 1), (2, 3), (5, 7), (8, 8), (9, 9), (17, 6)]:
            x = torch.randn(2, 8, h, w, generator=rng).to(dtype)
            for xi in (x, x.contiguous(memory_format=torch.channels_last)):
                assert torch.equal(avg_pool_ceil(xi, r), F.avg_pool2d(xi, r, r, ceil_mode=True)), (r, h, w)


def test_avg_pool_ceil_gradient_spreads_each_window_over_its_real_pixels(rng):
    x = torch.randn(1, 1, 5, 3, generator=rng, requires_grad=True)
    avg_pool_ceil(x, (2, 2)).sum().backward()
    # windows (rows 0-1 | 2-3 | 4) x (cols 0-1 | 2) hold 4, 2, 4, 2, 2 and 1 real pixels
    expected = torch.tensor([[1 / 4, 1 / 4, 1 / 2]] * 4 + [[1 / 2, 1 / 2, 1.0]])
    torch.testing.assert_close(x.grad[0, 0], expected)
