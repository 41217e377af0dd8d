"""linlogcut: values, gradients (never NaN), non-finite input, reference-relative thresholds."""

import math

import pytest
import torch

from openmm_bg.training import LinLogCut, linlogcut


def test_values_in_each_regime():
    u = torch.tensor([-3.0, 0.0, 1.0, 10.0, 1e12], dtype=torch.float64)
    out = linlogcut(u, high=1.0, max=100.0)
    expected = [-3.0, 0.0, 1.0, 1.0 + math.log(10.0), 1.0 + math.log(100.0)]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


def test_continuous_at_high_and_monotone():
    u = torch.linspace(-5, 50, 2001, dtype=torch.float64)
    out = linlogcut(u, high=7.0, max=40.0)
    assert torch.all(out[1:] >= out[:-1])
    assert (out[1:] - out[:-1]).abs().max() < 0.05


def test_gradient_values_and_nonfinite_rows():
    u = torch.tensor([-2.0, 3.0, 1e15, float("inf"), float("nan"), float("-inf")],
                     dtype=torch.float64, requires_grad=True)
    out = linlogcut(u, high=1.0, max=1e6)
    top = 1.0 + math.log(1e6)
    assert out[2].item() == pytest.approx(top)
    assert out[3].item() == pytest.approx(top) and out[4].item() == pytest.approx(top)
    assert out[5].item() == pytest.approx(top)  # -inf is a failed evaluation too, not a low energy
    out.sum().backward()
    torch.testing.assert_close(u.grad, torch.tensor([1.0, 1.0 / 3.0, 0, 0, 0, 0], dtype=torch.float64))
    assert torch.all(torch.isfinite(u.grad))


def test_gradient_matches_finite_difference_above_high():
    u = torch.tensor([5.0], dtype=torch.float64, requires_grad=True)
    linlogcut(u, high=2.0, max=100.0).sum().backward()
    h = 1e-6
    fd = (linlogcut(u.detach() + h, 2.0, 100.0) - linlogcut(u.detach() - h, 2.0, 100.0)) / (2 * h)
    assert u.grad.item() == pytest.approx(fd.item(), rel=1e-7)


def test_relative_to_reference():
    ref = -700.0
    u = torch.tensor([-710.0, -650.0, -500.0], dtype=torch.float64)
    out = linlogcut(u, high=100.0, max=1e4, reference=ref)
    torch.testing.assert_close(out[:2], u[:2])
    assert out[2].item() == pytest.approx(-600.0 + math.log(101.0))
    # the default high is relative to the reference and leaves typical energies untouched
    torch.testing.assert_close(linlogcut(u, reference=ref), u)


def test_float32_and_module():
    u = torch.tensor([0.5, 20.0, float("nan")], requires_grad=True)
    out = LinLogCut(high=10.0, max=1e3)(u)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert torch.all(torch.isfinite(u.grad)) and u.grad[2].item() == 0.0
    assert "high=10" in repr(LinLogCut(high=10.0, max=1e3))


def test_max_below_high_is_an_error():
    with pytest.raises(ValueError, match="max >= high"):
        linlogcut(torch.zeros(2), high=10.0, max=1.0)
