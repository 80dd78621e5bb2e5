"""The sparse (top-k) KD losses of students/sparse_loss.py against dense references."""
from __future__ import annotations

import pytest
import torch

from students.sparse_loss import DISTANCES, SparseLossConfig, SparseTargets, sparse_distance, sparse_kd_loss

N, V = 12, 40


def _logits(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, V, generator=g) * 3, torch.randn(N, V, generator=g) * 2  # teacher, student


def _targets(zt: torch.Tensor, k: int, tau_t: float, shuffle: bool = True) -> SparseTargets:
    ids = torch.topk(zt, k, dim=-1).indices  # (N, k)
    if shuffle:  # the store keeps ids in ascending order, not by value: order must not matter
        ids = ids[:, torch.randperm(k, generator=torch.Generator().manual_seed(1))]
    zmax = zt.max(-1, keepdim=True).values
    rel = zt.gather(-1, ids) - zmax
    lse = torch.logsumexp((zt - zmax) / tau_t, dim=-1)
    return SparseTargets(ids, rel, lse)


def _dense(distance: str, log_p: torch.Tensor, log_q: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Reference D per row for full distributions (N, C)."""
    p, q = log_p.exp(), log_q.exp()
    kl = lambda a, la, lb: (a * (la - lb)).sum(-1)  # noqa: E731
    if distance == "fkl":
        return kl(p, log_p, log_q)
    if distance == "rkl":
        return kl(q, log_q, log_p)
    if distance == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    m = beta * p + (1 - beta) * q
    return beta * kl(p, log_p, m.log()) + (1 - beta) * kl(q, log_q, m.log())


@pytest.mark.parametrize("distance", [d for d in DISTANCES if d != "mse"])
@pytest.mark.parametrize("tail", ["renormalize", "bucket"])
@pytest.mark.parametrize("taus", [(1.0, 1.0), (2.0, 2.0), (4.0, 1.0)])
def test_k_equal_vocab_reproduces_the_dense_loss(distance, tail, taus):
    zt, zs = _logits(0)
    tau_t, tau_s = taus
    cfg = SparseLossConfig(distance=distance, tail=tail, tau_t=tau_t, tau_s=tau_s, beta=0.3)
    got = sparse_distance(zs, _targets(zt, V, tau_t), cfg)
    ref = tau_s**2 * _dense(distance, torch.log_softmax(zt.double() / tau_t, -1),
                            torch.log_softmax(zs.double() / tau_s, -1), beta=0.3).mean()
    assert got.item() == pytest.approx(ref.item(), abs=1e-5, rel=1e-5)


def test_mse_with_k_equal_vocab_is_the_dense_mse_of_centred_logits():
    zt, zs = _logits(1)
    cfg = SparseLossConfig(distance="mse", tau_t=2.0, tau_s=1.0)
    got = sparse_distance(zs, _targets(zt, V, 2.0), cfg)
    t, s = zt / 2.0, zs / 1.0
    ref = ((t - t.mean(-1, keepdim=True)) - (s - s.mean(-1, keepdim=True))).pow(2).mean()
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("distance", [d for d in DISTANCES if d != "mse"])
def test_bucket_is_the_dense_loss_over_k_plus_one_classes(distance):
    zt, zs = _logits(2)
    k, tau = 5, 2.0
    tg = _targets(zt, k, tau)
    cfg = SparseLossConfig(distance=distance, tail="bucket", tau_t=tau, tau_s=tau)
    p = torch.softmax(zt.double() / tau, -1)
    q = torch.softmax(zs.double() / tau, -1)
    pk, qk = p.gather(-1, tg.ids), q.gather(-1, tg.ids)  # (N, k)
    P = torch.cat([pk, 1 - pk.sum(-1, keepdim=True)], -1)  # (N, k + 1): the tail as one class
    Q = torch.cat([qk, 1 - qk.sum(-1, keepdim=True)], -1)
    ref = tau**2 * _dense(distance, P.log(), Q.log()).mean()
    assert sparse_distance(zs, tg, cfg).item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-6)
    cfg_r = SparseLossConfig(distance=distance, tail="renormalize", tau_t=tau, tau_s=tau)
    ref_r = tau**2 * _dense(distance, (pk / pk.sum(-1, keepdim=True)).log(),
                            (qk / qk.sum(-1, keepdim=True)).log()).mean()
    assert sparse_distance(zs, tg, cfg_r).item() == pytest.approx(ref_r.item(), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("distance", DISTANCES)
def test_chunking_changes_neither_value_nor_gradient(distance):
    zt, zs = _logits(3)
    tg = _targets(zt, 7, 1.0)
    out = []
    for chunk in (3, 1000):
        z = zs.clone().requires_grad_(True)
        d = sparse_distance(z, tg, SparseLossConfig(distance=distance, chunk=chunk))
        d.backward()
        out.append((d.detach(), z.grad))
    assert torch.allclose(out[0][0], out[1][0], atol=1e-6)
    assert torch.allclose(out[0][1], out[1][1], atol=1e-6)
    assert out[0][1].abs().sum() > 0


def test_student_equal_to_teacher_gives_zero():
    zt, _ = _logits(4)
    for distance in DISTANCES:
        for tail in ("renormalize", "bucket"):
            d = sparse_distance(zt.clone(), _targets(zt, 6, 1.0), SparseLossConfig(distance=distance, tail=tail))
            assert abs(d.item()) < 1e-5, (distance, tail)


def test_alpha_mixes_next_token_ce_and_kd_linearly():
    zt, zs = _logits(5)
    labels = torch.arange(N) % V
    tg = _targets(zt, 6, 1.0)
    l0, ce, _ = sparse_kd_loss(zs, labels, None, SparseLossConfig(alpha=0.0))
    l1, _, kd = sparse_kd_loss(zs, None, tg, SparseLossConfig(alpha=1.0))
    lh, _, _ = sparse_kd_loss(zs, labels, tg, SparseLossConfig(alpha=0.5))
    assert ce.item() == pytest.approx(torch.nn.functional.cross_entropy(zs, labels).item())
    assert lh.item() == pytest.approx(0.5 * l0.item() + 0.5 * l1.item(), rel=1e-6)
    with pytest.raises(ValueError, match="teacher targets are needed"):
        sparse_kd_loss(zs, labels, None, SparseLossConfig(alpha=0.5))
    with pytest.raises(ValueError, match="log-sum-exp"):
        sparse_distance(zs, SparseTargets(tg.ids, tg.rel, None), SparseLossConfig(tail="bucket"))


def test_bad_settings_are_listed_in_one_error():
    with pytest.raises(ValueError, match="distance must be one of.*tail must be one of.*beta must be in"):
        SparseLossConfig(distance="kl", tail="drop", beta=1.0)


# ---------------------------------------------------------------------------- sampled targets (RS-KD)
def _sampled(zt: torch.Tensor, weights: torch.Tensor, tau_t: float = 1.0) -> "SampledTargets":
    """Targets over every id (S = V) with the given weights (N, V)."""
    from students.sparse_loss import SampledTargets

    ids = torch.arange(V).expand(len(zt), V)
    return SampledTargets(ids, weights, torch.log_softmax(zt / tau_t, -1))


@pytest.mark.parametrize("taus", [(1.0, 1.0), (2.0, 1.0), (1.0, 4.0)])
def test_sampled_estimate_with_counts_at_their_expectation_is_the_dense_kl(taus):
    """The estimator is linear in the counts and E[counts / N] = p: so its expectation, the
    estimate at counts = N p, is the dense forward KL exactly (value and gradient)."""
    tau_t, tau_s = taus
    zt, zs = _logits(2)
    cfg = SparseLossConfig(tau_t=tau_t, tau_s=tau_s, chunk=5)
    p = torch.softmax(zt / tau_t, -1)
    a = zs.clone().requires_grad_(True)
    got = sparse_distance(a, _sampled(zt, p, tau_t), cfg)
    got.backward()
    b = zs.clone().requires_grad_(True)
    want = tau_s**2 * _dense("fkl", torch.log_softmax(zt / tau_t, -1), torch.log_softmax(b / tau_s, -1)).mean()
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_sampled_estimate_by_hand():
    """Three ids, p = softmax(log [0.5, 0.3, 0.2]), q = softmax(log [0.2, 0.2, 0.6]); 3 draws
    gave id 0 twice and id 2 once: (2/3) log(0.5/0.2) + (1/3) log(0.2/0.6)."""
    import math

    from students.sparse_loss import SampledTargets

    zs = torch.tensor([[0.2, 0.2, 0.6]]).log()
    tg = SampledTargets(torch.tensor([[0, 2]]), torch.tensor([[2 / 3, 1 / 3]]), torch.tensor([[0.5, 0.2]]).log())
    got = sparse_distance(zs, tg, SparseLossConfig())
    assert got.item() == pytest.approx(2 / 3 * math.log(0.5 / 0.2) + 1 / 3 * math.log(0.2 / 0.6), rel=1e-6)


def test_sampled_estimate_converges_to_the_dense_kl_with_many_draws():
    """Real multinomial draws (seeded): with 200,000 draws per token the estimate is within
    4 standard errors of the dense KL (the per-token KL contributions' spread / sqrt(draws))."""
    import numpy as np

    zt, zs = _logits(3)
    p = torch.softmax(zt.double(), -1).numpy()
    rng = np.random.default_rng(0)
    draws = 200_000
    counts = np.stack([rng.multinomial(draws, row / row.sum()) for row in p])  # (N, V)
    est = sparse_distance(zs, _sampled(zt, torch.from_numpy(counts / draws).float()), SparseLossConfig())
    log_p, log_q = torch.log_softmax(zt.double(), -1), torch.log_softmax(zs.double(), -1)
    dense = _dense("fkl", log_p, log_q)  # (N,)
    spread = ((p * (log_p - log_q).numpy() ** 2).sum(-1) - dense.numpy() ** 2).clip(0).sum() ** 0.5 / len(p)
    assert abs(est.item() - dense.mean().item()) < 4 * spread / draws**0.5 + 1e-6


def test_sampled_targets_refuse_other_distances():
    zt, zs = _logits(4)
    with pytest.raises(ValueError, match="forward KL only"):
        sparse_distance(zs, _sampled(zt, torch.softmax(zt, -1)), SparseLossConfig(distance="rkl"))
