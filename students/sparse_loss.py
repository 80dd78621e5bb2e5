"""KD losses against sparse top-k teacher targets (causal-LM stores, format 3).

The teacher is known per token through its K kept ids, their logits relative to the row
maximum ``rel`` and (when stored at tau_t) ``lse = logsumexp((z - z_max) / tau_t)`` over the
whole vocabulary, so ``log p_t(i) = rel_i / tau_t - lse`` is exact for kept ids and the
teacher's tail mass ``1 - sum_i p_t(i)`` is known. The student is dense: its log-probabilities
``log q = log_softmax(z_s / tau_s)`` over the vocabulary, gathered at the kept ids, and its
own tail mass outside them.

Tail handling (``tail``):

* ``renormalize``: both distributions restricted to the kept ids and renormalised there
  (no lse needed);
* ``bucket``: the mass outside the kept ids is one extra class on both sides, so the
  distributions live on K + 1 classes (needs the stored lse at tau_t).

Distances D(p_t, q), per token, over those classes (then the mean over tokens):

* ``fkl``: KL(p_t || q)  (the study's ``ce``: the same gradient as the cross-entropy);
* ``rkl``: KL(q || p_t);
* ``gjsd``: generalized Jensen-Shannon, beta KL(p_t || m) + (1 - beta) KL(q || m) with
  m = beta p_t + (1 - beta) q, 0 < beta < 1 (GKD's definition);
* ``tvd``: total variation, 0.5 * sum |p_t - q|;
* ``mse``: mean over the kept ids of (t_i - s_i)^2 with t = rel / tau_t and s = z_s[ids] / tau_s,
  each centred on its mean over the kept ids (the teacher's logits are stored relative to
  the row maximum only; with k = vocab this is the dense MSE of mean-centred logits).

With k = vocab every distance equals its dense counterpart (tested).

Sampled targets (RS-KD, a ``causal-lm-sampled`` store): per token the distinct ids drawn from
p_s (the teacher at the sampling temperature s) with weights ``w_i = counts_i / N *
p_t(i) / p_s(i)`` (the importance ratio is 1 when tau_t = s), and the exact ``log p_t(i)``
of the drawn ids. Only ``fkl`` has an unbiased estimator from draws of p:
``KL(p_t || q) ~= sum_i w_i (log p_t(i) - log q(i))``, whose expectation over the draws is
the dense KL exactly (E[counts_i] = N p_s(i); tested with counts at their expectation and
against many draws). No tail is involved: the draws cover the whole vocabulary. The loss of a batch is
``(1 - alpha) * CE(next token, z_s) + alpha * tau_s**2 * D``, the tau_s**2 convention and
the alpha continuity of students/loss.py. Everything is float32 and computed in chunks of
``chunk`` tokens, each recomputed in the backward pass (activation checkpointing), so the
loss adds O(chunk x vocab) memory, not O(tokens x vocab), beyond the student's logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

DISTANCES = ("fkl", "rkl", "gjsd", "tvd", "mse")
TAILS = ("renormalize", "bucket")
_LOG_FLOOR = -60.0  # log of a mass that is 0 (a tail of nothing), finite so 0 * log 0 = 0 stays 0


@dataclass(frozen=True)
class SparseTargets:
    """Teacher targets of N tokens: ``ids`` (N, K) int64, ``rel`` (N, K) float32 = z_i - z_max,
    ``lse`` (N,) float32 = logsumexp((z - z_max) / tau_t) at the loss's tau_t, or None."""

    ids: torch.Tensor
    rel: torch.Tensor
    lse: torch.Tensor | None = None

    def cut(self, a: int, b: int) -> "SparseTargets":
        """Tokens a..b-1."""
        return SparseTargets(self.ids[a:b], self.rel[a:b], None if self.lse is None else self.lse[a:b])

    @property
    def top1(self) -> torch.Tensor:
        """(N,) the teacher's most likely kept id (the lowest among ties)."""
        return self.ids.gather(-1, self.rel.argmax(-1, keepdim=True))[:, 0]


@dataclass(frozen=True)
class SampledTargets:
    """Teacher draws for N tokens: ``ids`` (N, S) int64 distinct drawn ids (unused slots
    weigh 0), ``weights`` (N, S) float32 (see the module docstring; they sum to ~1 per
    token, exactly 1 when tau_t is the sampling temperature), ``log_p`` (N, S) float32 =
    log p_t of the ids at the loss's tau_t."""

    ids: torch.Tensor
    weights: torch.Tensor
    log_p: torch.Tensor

    def cut(self, a: int, b: int) -> "SampledTargets":
        """Tokens a..b-1."""
        return SampledTargets(self.ids[a:b], self.weights[a:b], self.log_p[a:b])

    @property
    def top1(self) -> torch.Tensor:
        """(N,) the most likely drawn id."""
        masked = self.log_p.masked_fill(self.weights <= 0, float("-inf"))
        return self.ids.gather(-1, masked.argmax(-1, keepdim=True))[:, 0]


@dataclass(frozen=True)
class SparseLossConfig:
    """Settings of the sparse KD loss; validated at construction (ValueError listing problems)."""

    distance: str = "fkl"
    tail: str = "bucket"
    alpha: float = 0.5
    tau_t: float = 1.0
    tau_s: float = 1.0
    beta: float = 0.5
    chunk: int = 1024

    def __post_init__(self) -> None:
        problems = []
        if self.distance not in DISTANCES:
            problems.append(f"distance must be one of {', '.join(DISTANCES)}; got {self.distance!r} instead")
        if self.tail not in TAILS:
            problems.append(f"tail must be one of {', '.join(TAILS)}; got {self.tail!r} instead")
        if not 0.0 <= self.alpha <= 1.0:
            problems.append(f"alpha must be in [0, 1]; got {self.alpha} instead")
        if not (self.tau_t > 0 and self.tau_s > 0):
            problems.append(f"temperatures must be > 0; got tau_t={self.tau_t}, tau_s={self.tau_s} instead")
        if not 0.0 < self.beta < 1.0:
            problems.append(f"beta must be in (0, 1); got {self.beta} instead")
        if self.chunk < 1:
            problems.append(f"chunk must be >= 1; got {self.chunk} instead")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def needs_lse(self) -> bool:
        """Whether the teacher's log-sum-exp at tau_t is needed (the tail as a class)."""
        return self.tail == "bucket" and self.distance != "mse"


def _log_tail(log_kept: torch.Tensor) -> torch.Tensor:
    """log(1 - sum_i exp(log_kept_i)) per row, floored: (N, K) -> (N, 1)."""
    kept = torch.logsumexp(log_kept, dim=-1, keepdim=True).clamp(max=0.0)  # (N, 1)
    return torch.log(-torch.expm1(kept)).clamp(min=_LOG_FLOOR)  # (N, 1)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """sum_i a_i (log a_i - log b_i) per row: (N, C) -> (N,)."""
    return (log_a.exp() * (log_a - log_b)).sum(dim=-1)


def _per_token(zs: torch.Tensor, ids: torch.Tensor, rel: torch.Tensor, lse: torch.Tensor | None,
               cfg: SparseLossConfig) -> torch.Tensor:
    """D for one chunk of tokens: zs (n, V), ids/rel (n, K), lse (n,) -> (n,) float32."""
    s = zs.float() / cfg.tau_s  # (n, V)
    t = rel.float() / cfg.tau_t  # (n, K)
    s_kept = s.gather(-1, ids)  # (n, K)
    if cfg.distance == "mse":
        d = (t - t.mean(-1, keepdim=True)) - (s_kept - s_kept.mean(-1, keepdim=True))  # (n, K)
        return d.pow(2).mean(dim=-1)
    if cfg.tail == "renormalize":
        log_p = F.log_softmax(t, dim=-1)  # (n, K)
        log_q = F.log_softmax(s_kept, dim=-1)  # (n, K)
    else:
        assert lse is not None
        log_p = t - lse[:, None]  # (n, K) exact kept log-probabilities
        log_q = s_kept - torch.logsumexp(s, dim=-1, keepdim=True)  # (n, K)
        outside = s.scatter(-1, ids, float("-inf"))  # (n, V) the student's logits outside the kept ids
        log_q_tail = (torch.logsumexp(outside, -1, keepdim=True) - torch.logsumexp(s, -1, keepdim=True))
        log_p = torch.cat([log_p, _log_tail(log_p)], dim=-1)  # (n, K + 1)
        log_q = torch.cat([log_q, log_q_tail.clamp(min=_LOG_FLOOR)], dim=-1)  # (n, K + 1)
    if cfg.distance == "fkl":
        return _kl(log_p, log_q)
    if cfg.distance == "rkl":
        return _kl(log_q, log_p)
    if cfg.distance == "tvd":
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)
    b = cfg.beta  # gjsd
    log_m = torch.logsumexp(torch.stack([log_p + torch.log(torch.tensor(b)),
                                         log_q + torch.log(torch.tensor(1 - b))]), dim=0)  # (n, C)
    return b * _kl(log_p, log_m) + (1 - b) * _kl(log_q, log_m)


def _sampled_per_token(zs: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, log_p: torch.Tensor,
                       cfg: SparseLossConfig) -> torch.Tensor:
    """The KL estimate for one chunk of tokens: zs (n, V), ids/weights/log_p (n, S) -> (n,)."""
    s = zs.float() / cfg.tau_s  # (n, V)
    log_q = s.gather(-1, ids) - torch.logsumexp(s, dim=-1, keepdim=True)  # (n, S)
    return (weights.float() * (log_p.float() - log_q)).sum(dim=-1)


def _check_targets(targets: "SparseTargets | SampledTargets", cfg: SparseLossConfig) -> bool:
    """Whether ``targets`` are draws; ValueError for what they cannot serve."""
    sampled = isinstance(targets, SampledTargets)
    if sampled and cfg.distance != "fkl":
        raise ValueError(f"sampled teacher targets give an unbiased estimate of the forward KL only; use distance "
                         f"fkl (ce) instead of {cfg.distance}, or a top-k store")
    if not sampled and cfg.needs_lse and targets.lse is None:
        raise ValueError("the bucket tail needs the teacher's log-sum-exp at tau_t; none was given")
    return sampled


def sparse_distance(student_logits: torch.Tensor, targets: "SparseTargets | SampledTargets",
                    cfg: SparseLossConfig) -> torch.Tensor:
    """tau_s**2 * mean over the N tokens of D(p_t, q): a scalar float32 tensor.

    ``student_logits`` (N, V); ``targets`` of the same N tokens (sampled targets: the
    unbiased KL estimate, ``fkl`` only). Raises ValueError when the loss needs the teacher's
    lse (``tail="bucket"``) and ``targets.lse`` is None, or for another distance on draws."""
    sampled = _check_targets(targets, cfg)
    n = len(student_logits)
    if n == 0:
        return student_logits.new_zeros((), dtype=torch.float32)
    total = student_logits.new_zeros((), dtype=torch.float32)
    for a in range(0, n, cfg.chunk):
        b = min(a + cfg.chunk, n)
        if sampled:
            fn, args = _sampled_per_token, (student_logits[a:b], targets.ids[a:b], targets.weights[a:b],
                                            targets.log_p[a:b])
        else:
            lse = targets.lse[a:b] if targets.lse is not None else None
            fn, args = _per_token, (student_logits[a:b], targets.ids[a:b], targets.rel[a:b], lse)
        if student_logits.requires_grad:  # recompute the chunk's (chunk, V) tensors in backward
            part = checkpoint(fn, *args, cfg, use_reentrant=False)
        else:
            part = fn(*args, cfg)
        total = total + part.sum()
    return cfg.tau_s**2 * total / n


def _check_parts(labels: torch.Tensor | None, targets: object, cfg: SparseLossConfig) -> None:
    """ValueError when a part the loss weights (alpha) is missing."""
    if cfg.alpha < 1.0 and labels is None:
        raise ValueError(f"alpha={cfg.alpha} < 1 weights the next-token cross-entropy, so labels are needed")
    if cfg.alpha > 0.0 and targets is None:
        raise ValueError(f"alpha={cfg.alpha} > 0 weights the distillation term, so teacher targets are needed")


def _mix(ce: torch.Tensor | None, kd: torch.Tensor | None, cfg: SparseLossConfig,
         like: torch.Tensor) -> torch.Tensor:
    """(1 - alpha) * ce + alpha * kd on ``like``'s device, a part of weight 0 left out (it may be None)."""
    loss = like.new_zeros((), dtype=torch.float32)
    if ce is not None and cfg.alpha < 1.0:
        loss = loss + (1.0 - cfg.alpha) * ce
    if kd is not None and cfg.alpha > 0.0:
        loss = loss + cfg.alpha * kd
    return loss


def sparse_kd_loss(student_logits: torch.Tensor, labels: torch.Tensor | None,
                   targets: SparseTargets | SampledTargets | None,
                   cfg: SparseLossConfig) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(loss, ce, kd) of N tokens: ``(1 - alpha) * CE(labels, z_s) + alpha * kd`` with
    kd = ``sparse_distance``; ``student_logits`` (N, V), ``labels`` (N,) next-token ids.
    A part with weight 0 may be missing (None); a needed one raises ValueError."""
    _check_parts(labels, targets, cfg)
    ce = F.cross_entropy(student_logits.float(), labels) if labels is not None and len(labels) else None
    kd = sparse_distance(student_logits, targets, cfg) if targets is not None else None
    return _mix(ce, kd, cfg, student_logits), ce, kd


def _chunk_sums(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor | None,
                targets: "SparseTargets | SampledTargets | None", cfg: SparseLossConfig) -> torch.Tensor:
    """(sum of CE, sum of D) over one chunk of n tokens: h (n, H) -> logits (n, V) -> (2,) float32."""
    z = F.linear(h, weight, bias).float()  # (n, V): the only place the chunk's logits exist
    ce = F.cross_entropy(z, labels, reduction="sum") if labels is not None else z.new_zeros(())
    if isinstance(targets, SampledTargets):
        d = _sampled_per_token(z, targets.ids, targets.weights, targets.log_p, cfg).sum()
    elif targets is not None:
        d = _per_token(z, targets.ids, targets.rel, targets.lse, cfg).sum()
    else:
        d = z.new_zeros(())
    return torch.stack([ce, d])  # (2,)


def chunked_kd_loss(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor | None,
                    targets: SparseTargets | SampledTargets | None, cfg: SparseLossConfig
                    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``sparse_kd_loss(head(hidden), labels, targets, cfg)`` without the (N, V) logits.

    ``hidden`` (N, H) are the student's final hidden states of the N selected tokens and
    ``head`` its LM head (logits = hidden @ W.T + b). The logits are made ``cfg.chunk``
    tokens at a time and each chunk's are recomputed in the backward pass (activation
    checkpointing), so memory is O(chunk x V), not O(N x V); loss, ce, kd and the gradients
    equal the unchunked ones (tested). Same None/ValueError rules as ``sparse_kd_loss``."""
    _check_parts(labels, targets, cfg)
    if targets is not None:
        _check_targets(targets, cfg)
    n = len(hidden)
    sums = hidden.new_zeros(2, dtype=torch.float32)  # (2,) CE sum, D sum
    for a in range(0, n, cfg.chunk):
        b = min(a + cfg.chunk, n)
        args = (hidden[a:b], head.weight, head.bias, None if labels is None else labels[a:b],
                None if targets is None else targets.cut(a, b))
        if torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad):
            sums = sums + checkpoint(_chunk_sums, *args, cfg, use_reentrant=False)
        else:
            sums = sums + _chunk_sums(*args, cfg)
    ce = sums[0] / n if labels is not None and n else None
    kd = cfg.tau_s**2 * sums[1] / max(n, 1) if targets is not None else None
    return _mix(ce, kd, cfg, hidden), ce, kd
