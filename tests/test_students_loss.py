"""The KD loss against values computed by hand (plain `math`, no torch), its gradients, its
tau_s**2 scale convention and its continuity in alpha."""
from __future__ import annotations

import math

import pytest
import torch

from students.errors import ConfigError
from students.loss import KDLossConfig, kd_loss

Z_S = [[1.0, 2.0, 0.5], [0.0, -1.0, 1.5]]
Z_T = [[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]]
LABELS = [1, 2]
TAU_T = 2.0


def _softmax(z: list[float], tau: float) -> list[float]:
    e = [math.exp(v / tau) for v in z]
    return [v / sum(e) for v in e]


def _reference(distance: str, tau_s: float, alpha: float) -> tuple[float, float, float]:
    """(loss, ce, kd) by hand: per-example terms with math, then the mean over examples."""
    ce = sum(-math.log(_softmax(zs, 1.0)[y]) for zs, y in zip(Z_S, LABELS)) / len(Z_S)
    kd = 0.0
    for zs, zt in zip(Z_S, Z_T):
        if distance == "ce":
            pt, ps = _softmax(zt, TAU_T), _softmax(zs, tau_s)
            kd += sum(a * math.log(a / b) for a, b in zip(pt, ps))
        else:
            kd += sum((a / TAU_T - b / tau_s) ** 2 for a, b in zip(zt, zs)) / len(zs)
    kd = tau_s**2 * kd / len(Z_S)
    return (1 - alpha) * ce + alpha * kd, ce, kd


def _tensors():
    return (torch.tensor(Z_S, requires_grad=True), torch.tensor(LABELS), torch.tensor(Z_T))


@pytest.mark.parametrize("distance", ["ce", "mse"])
@pytest.mark.parametrize("student_temperature", ["1", "teacher"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_loss_matches_hand_computed_values(distance, student_temperature, alpha):
    cfg = KDLossConfig(distance, TAU_T, student_temperature, alpha)
    tau_s = TAU_T if student_temperature == "teacher" else 1.0
    assert cfg.tau_s == tau_s
    zs, y, zt = _tensors()
    out = kd_loss(zs, y, zt, cfg)
    loss, ce, kd = _reference(distance, tau_s, alpha)
    assert out.loss.item() == pytest.approx(loss, rel=1e-6, abs=1e-7)
    assert out.ce.item() == pytest.approx(ce, rel=1e-6)
    assert out.kd.item() == pytest.approx(kd, rel=1e-6)
    out.loss.backward()
    assert torch.isfinite(zs.grad).all() and zs.grad.abs().sum() > 0


def test_pinned_values():
    """Two values worked out on paper, so a shared mistake of code and reference shows up.

    Example 1, mse, tau_s = tau_t = 2: tau^2 * mean((z_t - z_s)^2 / tau^2) = mean of
    (1, 4, 0.25) = 1.75; example 2: mean of (1, 4, 12.25) = 5.75; batch mean 3.75.
    KL of identical distributions is 0 (the logged KD term reaches 0, CE would not).
    """
    zs, y, zt = _tensors()
    assert kd_loss(zs, None, zt, KDLossConfig("mse", 2.0, "teacher", 1.0)).loss.item() == pytest.approx(3.75)
    same = kd_loss(zs, None, zs.detach().clone(), KDLossConfig("ce", 3.0, "teacher", 1.0))
    assert same.kd.item() == pytest.approx(0.0, abs=1e-7)


def test_gradients_finite_for_extreme_logits():
    zs = torch.tensor([[80.0, -80.0, 0.0], [-1e3, 1e3, 5.0]], requires_grad=True)
    zt = torch.tensor([[-90.0, 90.0, 0.0], [1e3, -1e3, 0.0]])
    for distance in ("ce", "mse"):
        for st in ("1", "teacher"):
            zs.grad = None
            out = kd_loss(zs, torch.tensor([0, 1]), zt, KDLossConfig(distance, 0.5, st, 0.5))
            out.loss.backward()
            assert torch.isfinite(out.loss) and torch.isfinite(zs.grad).all()


def test_tau_squared_keeps_the_kd_gradient_independent_of_temperature():
    """With tau_s = tau_t = T, d(T^2 KL)/dz_s -> ((z_s - mean z_s) - (z_t - mean z_t)) / (C * B)
    as T grows (Hinton et al.): the factor tau_s^2 undoes the 1/T^2 shrinkage."""
    zs, _, zt = _tensors()
    grads = []
    for T in (200.0, 2000.0):
        zs.grad = None
        kd_loss(zs, None, zt, KDLossConfig("ce", T, "teacher", 1.0)).loss.backward()
        grads.append(zs.grad.clone())
    s, t = zs.detach(), zt
    limit = ((s - s.mean(-1, keepdim=True)) - (t - t.mean(-1, keepdim=True))) / (3 * 2)  # (B, C)
    assert torch.allclose(grads[0], limit, atol=2e-3 * limit.abs().max())
    assert torch.allclose(grads[1], limit, atol=2e-4 * limit.abs().max())


def test_tau_s_one_gives_the_plain_softmax_gradient():
    """With tau_s = 1 the factor is 1: d KD / dz_s = (softmax(z_s) - softmax(z_t / tau_t)) / B."""
    zs, _, zt = _tensors()
    kd_loss(zs, None, zt, KDLossConfig("ce", TAU_T, "1", 1.0)).loss.backward()
    expected = (torch.softmax(zs.detach(), -1) - torch.softmax(zt / TAU_T, -1)) / 2
    assert torch.allclose(zs.grad, expected, atol=1e-7)


def test_mse_with_tau_s_equal_tau_t_does_not_depend_on_temperature():
    zs, _, zt = _tensors()
    values = [kd_loss(zs, None, zt, KDLossConfig("mse", T, "teacher", 1.0)).loss.item() for T in (0.5, 1.0, 4.0)]
    assert values == pytest.approx([values[1]] * 3, rel=1e-6)


@pytest.mark.parametrize("distance", ["ce", "mse"])
def test_loss_is_continuous_and_linear_in_alpha(distance):
    zs, y, zt = _tensors()
    at = lambda a: kd_loss(zs, y, zt, KDLossConfig(distance, TAU_T, "teacher", a)).loss.item()  # noqa: E731
    assert at(1e-6) == pytest.approx(at(0.0), abs=1e-5)
    assert at(1 - 1e-6) == pytest.approx(at(1.0), abs=1e-5)
    assert at(0.5) == pytest.approx((at(0.0) + at(1.0)) / 2, rel=1e-6)


def test_alpha_zero_needs_no_teacher_and_alpha_one_no_labels():
    zs, y, zt = _tensors()
    plain = kd_loss(zs, y, None, KDLossConfig(alpha=0.0))
    assert plain.kd is None and plain.loss.item() == pytest.approx(_reference("ce", 1.0, 0.0)[1], rel=1e-6)
    pure = kd_loss(zs, None, zt, KDLossConfig("ce", TAU_T, "teacher", 1.0))
    assert pure.ce is None and pure.loss.item() == pytest.approx(_reference("ce", TAU_T, 1.0)[2], rel=1e-6)
    with pytest.raises(ValueError, match="teacher logits are needed"):
        kd_loss(zs, y, None, KDLossConfig(alpha=0.5))
    with pytest.raises(ValueError, match="labels are needed"):
        kd_loss(zs, None, zt, KDLossConfig(alpha=0.5))


def test_invalid_settings_are_listed_in_one_error():
    with pytest.raises(ConfigError) as info:
        KDLossConfig("kl", -1.0, "2", 1.5)
    msg = str(info.value)
    for part in ("Got 'kl' instead", "Got -1.0 instead", "Got '2' instead", "Got 1.5 instead"):
        assert part in msg
