"""The one knowledge-distillation loss of the project.

    L = (1 - alpha) * CE(y, z_s)  +  alpha * tau_s**2 * D(z_t / tau_t, z_s / tau_s)

with z_s the student logits, z_t the teacher logits, y the gold labels and

* ``distance="ce"``:  D = KL(softmax(z_t / tau_t) || softmax(z_s / tau_s)), summed over
  classes. KL differs from the cross-entropy between the two distributions only by the
  teacher's entropy, which does not depend on the student, so the gradient is the CE
  gradient; KL is what is returned and logged because it is 0 when the student matches.
* ``distance="mse"``: D = mean over classes of (z_t / tau_t - z_s / tau_s)**2.

Both are averaged over the examples of the batch.

Scale convention (the tau_s**2 factor). The gradient of D with respect to z_s carries a
factor 1 / tau_s (softmax(z / tau) and z / tau both divide by tau_s). Multiplying by
tau_s**2 is Hinton et al.'s T**2 rule when tau_s = tau_t = T: it keeps the KD gradient
roughly independent of T (for large T the CE-distance gradient tends to
(z_s - z_t) / C for zero-mean logits), so changing the temperature does not silently
change the effective learning rate, and the KD term stays on the scale of the gold CE.
When tau_s = 1 (only the teacher is softened) there is nothing to undo: the factor is 1
and the gradient is softmax(z_s) - softmax(z_t / tau_t), the CE gradient's own scale.
For MSE with tau_s = tau_t the factor cancels the temperature exactly:
tau**2 * mean((z_t - z_s)**2 / tau**2) = mean((z_t - z_s)**2), so tau_t has no effect.

Continuity in alpha: the gold CE term is never rescaled, so L(alpha) is linear in alpha
and nothing jumps at alpha = 0 or alpha = 1 (unlike losses that drop a T**2 factor or
renormalise when one term switches off). alpha = 0 needs no teacher logits; alpha = 1
needs no labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from logitstore.tasks import KDTerm, Task
from students.config import KDLossConfig


@dataclass(frozen=True)
class KDLossOutput:
    """The loss to backpropagate and its two parts, for logging.

    ``ce`` is the gold cross-entropy (None when no labels were given), ``kd`` the scaled
    distance tau_s**2 * D (None when no teacher logits were given). Both are means over
    the batch; ``loss`` = (1 - alpha) * ce + alpha * kd with a missing part counting 0
    (it can only be missing when its weight is 0).
    """

    loss: torch.Tensor
    ce: torch.Tensor | None
    kd: torch.Tensor | None


MASKED = -1e9  # logit given to classes outside ``mask`` (probability 0, still finite)


def distance(teacher_logits: torch.Tensor, student_logits: torch.Tensor, cfg: KDLossConfig,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """tau_s**2 * D(z_t / tau_t, z_s / tau_s), averaged over the batch; a scalar tensor.

    ``mask`` (B, C) bool, when given, keeps only some classes of each example (QA: the
    window's real tokens, not its padding): the others get probability 0 in both
    distributions, and MSE averages over the kept classes only."""
    zt = teacher_logits.float() / cfg.tau_t  # (B, C)
    zs = student_logits.float() / cfg.tau_s  # (B, C)
    if mask is not None:
        zt, zs = zt.masked_fill(~mask, MASKED), zs.masked_fill(~mask, MASKED)
    if cfg.distance == "ce":
        log_pt = F.log_softmax(zt, dim=-1)  # (B, C)
        log_ps = F.log_softmax(zs, dim=-1)  # (B, C)
        per_example = (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1)  # (B,) KL(p_t || p_s)
    elif mask is None:
        per_example = (zt - zs).pow(2).mean(dim=-1)  # (B,)
    else:
        per_example = ((zt - zs).pow(2) * mask).sum(dim=-1) / mask.sum(dim=-1)  # (B,)
    return cfg.tau_s**2 * per_example.mean()


def kd_loss(student_logits: torch.Tensor, labels: torch.Tensor | None,
            teacher_logits: torch.Tensor | None, cfg: KDLossConfig, mask: torch.Tensor | None = None) -> KDLossOutput:
    """The KD loss of one batch.

    student_logits (B, C), labels (B,) int64 or None, teacher_logits (B, C) or None;
    ``mask`` (B, C) bool or None restricts both terms to some classes (see ``distance``).
    Raises ValueError when a part with a non-zero weight lacks its input (labels when
    alpha < 1, teacher logits when alpha > 0) or when shapes disagree.
    """
    alpha = float(cfg.alpha)
    if alpha < 1.0 and labels is None:
        raise ValueError(f"alpha={alpha} < 1 weights the gold cross-entropy, so labels are needed")
    if alpha > 0.0 and teacher_logits is None:
        raise ValueError(f"alpha={alpha} > 0 weights the distillation term, so teacher logits are needed")
    if teacher_logits is not None and teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher logits {tuple(teacher_logits.shape)} and student logits "
            f"{tuple(student_logits.shape)} differ in shape; is the store for this task?"
        )
    z_gold = student_logits.float() if mask is None else student_logits.float().masked_fill(~mask, MASKED)
    ce = F.cross_entropy(z_gold, labels) if labels is not None else None  # ()
    kd = distance(teacher_logits, student_logits, cfg, mask) if teacher_logits is not None else None  # ()
    loss = student_logits.new_zeros((), dtype=torch.float32)
    if ce is not None and alpha < 1.0:
        loss = loss + (1.0 - alpha) * ce
    if kd is not None and alpha > 0.0:
        loss = loss + alpha * kd
    return KDLossOutput(loss, ce, kd)


def task_loss(task: Task, student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
              cfg: KDLossConfig, attention_mask: torch.Tensor, use_labels: bool = True) -> tuple[KDLossOutput, int]:
    """The KD loss of one batch of ``task`` and the number of terms it averages.

    The task flattens the batch into its terms (``Task.kd_terms``: sequence
    classification one term over the B examples; token classification one over the
    labelled tokens only; QA two, start and end, each a distribution over a window's real
    tokens); the loss is the mean of ``kd_loss`` over the terms. ``use_labels`` False
    (alpha 1) drops the gold labels; the task's masks still apply.
    """
    terms, n = task.kd_terms(student_logits, labels, teacher_logits, attention_mask)
    return terms_loss(terms, cfg, use_labels), n


def terms_loss(terms: list[KDTerm], cfg: KDLossConfig, use_labels: bool = True) -> KDLossOutput:
    """The mean of ``kd_loss`` over a task's KD terms (``Task.kd_terms`` or ``unlabelled_terms``);
    ``use_labels`` False drops the terms' gold labels (needs alpha 1)."""
    parts = [kd_loss(t.student, t.labels if use_labels else None, t.teacher, cfg, mask=t.mask) for t in terms]
    mean = lambda xs: None if xs[0] is None else sum(xs) / len(xs)  # noqa: E731
    return KDLossOutput(mean([p.loss for p in parts]), mean([p.ce for p in parts]), mean([p.kd for p in parts]))
