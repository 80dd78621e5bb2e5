"""Train one student from a logit store: the recipe behind `students train`.

    open store -> choose teacher checkpoint -> batches -> KD loss -> AdamW step -> evaluate
    -> keep the best student by validation -> write OUT

OUT holds the student (``save_pretrained``: config.json + weights, loadable by
transformers) with the store's tokenizer, ``run_config.json`` (the resolved run config:
every setting, the chosen checkpoint, the student's layer map), ``metrics.jsonl`` (one
line per evaluation) and ``summary.json``. The run config is not called config.json
because that name belongs to the transformers model config in the same folder.

``online`` runs the teacher on every batch instead of reading its logits: the same
batches, the same torch RNG use, the same loss; only the source of z_t differs.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from logitstore.errors import NoCheckpointError
from logitstore.format import CheckpointMeta
from logitstore.store import LogitStore, SplitData, open_store
from logitstore.tasks import Task, get_task
from students.config import DENSE_DISTANCES, KDLossConfig, OptimConfig, TrainConfig, default_threads, output_dir
from students.data import Batch, SplitBatches
from students.early_stop import EarlyStop, stopped_record
from students.errors import ConfigError, StoreContentError
from students.loss import task_loss
from students.model import StudentInit, build_student, forward_kwargs
from students.teacher import CachedTeacher, Teacher, online_teacher

TRAIN_SPLIT = "train"
TEST_SPLIT = "test"


@dataclass(frozen=True)
class EvalResult:
    """Metrics of the student on one split: ``scores`` holds the task's metrics
    (the task's ``scores``, logitstore/tasks/: accuracy and macro_f1; NER entity f1, precision,
    recall and token accuracy; QA f1 and exact_match), ``ce`` its gold loss (the same
    definition as a checkpoint's val_loss), ``kd`` tau_s**2 * KL (or MSE) to the teacher,
    None when no teacher logits are available for the split."""

    split: str
    examples: int
    scores: dict[str, float]
    ce: float
    kd: float | None

    def score(self, metric: str) -> float:
        return float(self.scores[metric])

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON record: split, examples, each metric, ce, kd."""
        return {"split": self.split, "examples": self.examples, **self.scores, "ce": self.ce, "kd": self.kd}


@dataclass(frozen=True)
class TrainResult:
    """What a run did. ``losses`` holds the training loss of every step."""

    out: Path
    checkpoint: str | None
    metric: str
    steps: int
    best_step: int
    best: EvalResult
    test: EvalResult | None
    losses: list[float]
    train_seconds: float
    examples_per_s: float
    teacher_score: float | None = None  # the teacher checkpoint's validation score (CheckpointMeta), None without one
    early_stop: dict[str, Any] | None = None  # students/early_stop.py: stopped?, step/epoch stopped, best step/epoch


@torch.no_grad()
def evaluate(student: torch.nn.Module, batches: SplitBatches, teacher: Teacher | None,
             cfg: KDLossConfig, device: torch.device) -> EvalResult:
    """The task's metrics and gold loss (from the student's logits over the whole split, as
    logitstore scores a teacher) and, with a teacher, the mean KD distance over one split."""
    was_training = student.training
    student.eval()
    meta, split = batches.store.meta, batches.split
    task = get_task(meta.task)
    parts: list[np.ndarray] = []
    kd_sum, kd_n = 0.0, 0
    for batch in batches.epoch(0):  # unshuffled: rows in order
        batch = batch.to(device)
        z_s = task.model_logits(student(**forward_kwargs(student, batch)))  # (B, C) or (B, T, C)
        if teacher is not None:
            out, n = task_loss(task, z_s, batch.labels, teacher.logits(batch), cfg, batch.attention_mask)
            kd_sum += float(out.kd) * n
            kd_n += n
        z = z_s.float().cpu().numpy()
        if task.per_token:  # keep each row's own tokens: the store's (T, C) layout
            lengths = batch.attention_mask.sum(-1).cpu().numpy()
            parts.extend(z[j, :lengths[j]] for j in range(len(z)))
        else:
            parts.append(z)
    student.train(was_training)
    scores = task.scores(np.concatenate(parts), split, meta.label_names)
    ce = scores.pop("loss")
    examples = len(split.contexts) if split.contexts is not None else len(split)  # QA: questions, not windows
    return EvalResult(split.name, examples, scores, ce, kd_sum / max(kd_n, 1) if teacher is not None else None)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} was asked for but torch sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def choose_checkpoint(store: LogitStore, config: TrainConfig) -> CheckpointMeta | None:
    """The teacher checkpoint of the run, or None (alpha 0 with --init: no teacher needed)."""
    if config.alpha > 0 or config.online is not None:
        return store.select(config.teacher)
    if config.init is not None:
        return None
    try:
        return store.select(config.teacher)
    except NoCheckpointError as exc:
        raise StoreContentError(
            f"store {store.path} has no teacher checkpoint to initialise the student from; "
            "pass --init PATH (a transformers model with the store's tokenizer)"
        ) from exc


def _read_split(store: LogitStore, name: str) -> SplitData:
    if name not in store.split_names():
        raise StoreContentError(
            f"store {store.path} has no complete {name!r} split (splits: {', '.join(store.split_names()) or 'none'}); "
            f"rebuild it with data that has a {name} split"
        )
    return store.read_split(name)


def _has_logits(store: LogitStore, ckpt: CheckpointMeta | None, split: str) -> bool:
    meta = store.logits_meta(ckpt.name, split) if ckpt is not None else None
    return meta is not None and meta.complete


def _vocab_size(store: LogitStore, ckpt: CheckpointMeta | None) -> int:
    """The vocabulary size the store's token ids were made for: the teacher's, else the tokenizer's."""
    if ckpt is not None:
        from transformers import AutoConfig

        try:
            return int(AutoConfig.from_pretrained(ckpt.source_path, trust_remote_code=False).vocab_size)
        except Exception:  # source folder gone: fall back to the tokenizer the store holds
            pass
    return len(store.load_tokenizer())


def _optimizer(model: torch.nn.Module, optim: OptimConfig, total_steps: int
               ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no weight decay on biases and LayerNorm weights) and transformers' warm-up
    schedule: linear from 0 to ``optim.lr`` over the warm-up steps, then linear decay to 0
    at ``total_steps`` or constant."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim < 2 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": optim.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=optim.lr)
    warmup = optim.warmup_steps(total_steps)
    if optim.schedule == "constant":
        return opt, get_constant_schedule_with_warmup(opt, warmup)
    return opt, get_linear_schedule_with_warmup(opt, warmup, total_steps)


def _progress(enabled: bool, console: Console) -> Progress:
    return Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                    TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), console=console,
                    disable=not enabled)


@dataclass
class _Run:
    """Everything a run needs, resolved from its config before the first step."""

    store: LogitStore
    task: Task
    ckpt: CheckpointMeta | None
    metric: str
    device: torch.device
    student: torch.nn.Module
    init: StudentInit
    train_teacher: Teacher | None
    train_batches: SplitBatches
    evals: list[tuple[SplitBatches, Teacher | None]]  # validation first, then test if present


def _prepare(config: TrainConfig, console: Console) -> _Run:
    device = resolve_device(config.device)
    store = open_store(config.store)
    ckpt = choose_checkpoint(store, config)
    task = get_task(store.meta.task)
    if config.distance not in DENSE_DISTANCES:
        raise ConfigError(f"distance {config.distance} works on causal-LM stores only; use ce or mse", [])
    metric = ckpt.metric if ckpt is not None else task.default_metric
    if metric not in task.metrics:
        raise StoreContentError(f"the store's task metric {metric!r} is not one of {', '.join(task.metrics)}; "
                                "update students or rebuild the store")
    if ckpt is not None:
        console.print(f"teacher checkpoint: {ckpt.name} (--teacher {config.teacher}; val_loss={ckpt.val_loss:.4f}, "
                      f"{metric}={ckpt.val_score:.4f}, encoding={ckpt.encoding})")
    train_split = _read_split(store, TRAIN_SPLIT)
    eval_names = [store.meta.validation_split] + [TEST_SPLIT] * (TEST_SPLIT in store.split_names())

    # The online teacher is loaded before torch is seeded, so it cannot shift the student's RNG.
    online = online_teacher(config.online, ckpt, device, task) if config.online is not None else None
    torch.manual_seed(config.seed)
    student, init = build_student(config.init or ckpt.source_path, config.layers, store.meta.label_names,
                                  _vocab_size(store, ckpt), task)
    student.to(device).train()

    name = ckpt.name if ckpt is not None else None
    loader = config.loader_config(store.meta.pad_token_id)
    train_batches = SplitBatches(store, train_split, name, loader, shuffle=True,
                                 read_logits=config.alpha > 0 and online is None)
    train_teacher = None if config.alpha == 0 else online or CachedTeacher()  # alpha 0: no teacher logits
    eval_loader = replace(loader, batch_size=config.eval_batch_size)
    evals = []
    for split in (_read_split(store, n) for n in eval_names):
        # The KD distance on an eval split: the online teacher, else the stored logits where the split has them.
        cached = online is None and _has_logits(store, ckpt, split.name)
        evals.append((SplitBatches(store, split, name if cached else None, eval_loader, shuffle=False),
                      online or (CachedTeacher() if cached else None)))
    return _Run(store, task, ckpt, metric, device, student, init, train_teacher, train_batches, evals)


def _eval_due(step: int, total_steps: int, steps_per_epoch: int, eval_every: int | None) -> bool:
    if step == total_steps:
        return True
    return step % eval_every == 0 if eval_every else step % steps_per_epoch == 0


def train(config: TrainConfig, console: Console | None = None) -> TrainResult:
    """Run ``config``: train, evaluate, keep the best student by validation and write OUT.

    Raises logitstore errors for an unusable store (missing, corrupt, unknown format
    version, no such checkpoint) and students errors for everything else the user can fix.
    """
    console = console or Console()
    output_dir(config.out, create=False)  # a file in the way fails here, before the store is read
    torch.set_num_threads(config.threads or default_threads())  # before _prepare: the ONNX teacher takes it too
    from students.lm import is_lm_store, train_lm  # causal-LM stores: sparse top-k targets (issue 12)

    if is_lm_store(config.store):
        if config.patience is not None:
            raise ConfigError("--patience is not supported on causal-LM stores yet; leave it out", [])
        return train_lm(config, console)
    run = _prepare(config, console)
    loss_cfg, student = config.loss, run.student
    steps_per_epoch = len(run.train_batches)
    total_steps = config.optim.total_steps(steps_per_epoch)
    opt, sched = _optimizer(student, config.optim, total_steps)
    out = output_dir(config.out)
    _write_run_config(out, config, run, steps_per_epoch, total_steps)

    losses: list[float] = []
    best: tuple[float, int, EvalResult, dict[str, torch.Tensor]] | None = None
    running, stop, stopped = _Running(), EarlyStop(config.patience), False
    step, epoch, examples, eval_seconds = 0, 0, 0, 0.0
    started = time.perf_counter()
    with open(out / "metrics.jsonl", "w") as log, _progress(config.progress, console) as bar:
        task = bar.add_task("train", total=total_steps, rate="", loss="-")
        while step < total_steps and not stopped:
            for batch in run.train_batches.epoch(epoch):
                parts = _train_step(student, run.train_teacher, batch.to(run.device), config, loss_cfg, opt, sched,
                                    run.task)
                step += 1
                examples += len(batch)
                losses.append(parts[0])
                running.add(*parts)
                rate = step / (time.perf_counter() - started - eval_seconds)
                bar.update(task, advance=1, rate=f"{rate:.2f} steps/s", loss=f"{parts[0]:.4f}")
                if _eval_due(step, total_steps, steps_per_epoch, config.eval_every):
                    tick = time.perf_counter()
                    line = {"step": step, "epoch": epoch + 1, **running.means(), "lr": sched.get_last_lr()[0]}
                    best = _evaluate_and_keep(run, config, out, line, log, best)
                    stopped = stop.update(improved=best[1] == step) and step < total_steps
                    running = _Running()
                    eval_seconds += time.perf_counter() - tick
                if step == total_steps or stopped:
                    break
            epoch += 1
    train_seconds = time.perf_counter() - started - eval_seconds

    stopped_at = stopped_record(stopped, step, epoch_of(step, steps_per_epoch), best[1],
                                epoch_of(best[1], steps_per_epoch))
    result = _finish(run, config, out, best, losses, train_seconds, examples / train_seconds, stopped_at)
    _write_summary(result, console)
    return result


def epoch_of(step: int, steps_per_epoch: int) -> int:
    """The epoch (from 1) that step ``step`` (from 1) belongs to."""
    return (step - 1) // steps_per_epoch + 1


def _finish(run: _Run, config: TrainConfig, out: Path, best: tuple[float, int, EvalResult, dict[str, torch.Tensor]],
            losses: list[float], train_seconds: float, examples_per_s: float,
            early_stop: dict[str, Any]) -> TrainResult:
    """Restore the best student, evaluate it on test (when the store has one), save it to OUT."""
    _, best_step, best_result, state = best
    run.student.load_state_dict(state)
    test = evaluate(run.student, *run.evals[1], config.loss, run.device) if len(run.evals) > 1 else None
    run.student.save_pretrained(out)
    run.store.save_tokenizer(out)
    return TrainResult(out, run.ckpt.name if run.ckpt else None, run.metric, len(losses), best_step, best_result,
                       test, losses, train_seconds, examples_per_s, run.ckpt.val_score if run.ckpt else None,
                       early_stop)


def _evaluate_and_keep(run: _Run, config: TrainConfig, out: Path, line: dict[str, Any], log: Any,
                       best: tuple[float, int, EvalResult, dict[str, torch.Tensor]] | None
                       ) -> tuple[float, int, EvalResult, dict[str, torch.Tensor]]:
    """Evaluate on validation at step ``line["step"]``: log the metrics line (with the
    training means in ``line``), save OUT/checkpoint-<step> when asked, and return the best
    (score, step, result, weights) so far (ties keep the earlier student)."""
    step, student = line["step"], run.student
    result = evaluate(student, *run.evals[0], config.loss, run.device)
    line = {"step": step, "epoch": line["epoch"], **result.to_dict(),
            **{k: v for k, v in line.items() if k not in ("step", "epoch")}}
    log.write(json.dumps(line) + "\n")
    log.flush()
    if config.save_checkpoints:  # OUT/checkpoint-<step>: a teacher run `logitstore build` reads
        student.save_pretrained(out / f"checkpoint-{step}")
        run.store.save_tokenizer(out / f"checkpoint-{step}")
    if best is None or result.score(run.metric) > best[0]:
        state = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
        best = (result.score(run.metric), step, result, state)
    return best


def _write_run_config(out: Path, config: TrainConfig, run: _Run, steps_per_epoch: int, total_steps: int) -> None:
    """OUT/run_config.json: every setting (the flat TrainConfig) and what it resolved to."""
    loss_cfg = config.loss
    resolved = {**config.to_dict(), "threads": torch.get_num_threads(),
                "checkpoint": run.ckpt.name if run.ckpt else None,
                "checkpoint_meta": run.ckpt.to_dict() if run.ckpt else None,
                "tau_t": loss_cfg.tau_t, "tau_s": loss_cfg.tau_s, "metric": run.metric, "device": str(run.device),
                "student_init": asdict(run.init), "train_rows": len(run.train_batches.split),
                "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                "streamed": run.train_batches.streamed, "store_meta": run.store.meta.to_dict()}
    (out / "run_config.json").write_text(json.dumps(resolved, indent=2) + "\n")


def _write_summary(r: TrainResult, console: Console) -> None:
    """OUT/summary.json and the closing line on the console."""
    summary = {"checkpoint": r.checkpoint, "metric": r.metric, "steps": r.steps, "best_step": r.best_step,
               "best_validation": r.best.to_dict(), "test": r.test.to_dict() if r.test else None,
               "final_train_loss": r.losses[-1], "train_seconds": round(r.train_seconds, 3),
               "examples_per_s": round(r.examples_per_s, 2), "early_stop": r.early_stop}
    (r.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    stopped = r.early_stop is not None and r.early_stop["stopped"]
    console.print(f"best {r.metric} on {r.best.split}: {r.best.score(r.metric):.4f} at step {r.best_step}"
                  + (f"; stopped early at step {r.steps} (--patience)" if stopped else "")
                  + (f"; test {r.metric}: {r.test.score(r.metric):.4f}" if r.test else "") + f"; wrote {r.out}")


def _train_step(student: torch.nn.Module, teacher: Teacher | None, batch: Batch, config: TrainConfig,
                loss_cfg: KDLossConfig, opt: torch.optim.Optimizer, sched: Any,
                task: Task) -> tuple[float, float, float]:
    """One optimizer step on ``batch``; returns (loss, ce, kd) as floats (nan for a part not computed)."""
    z_s = task.model_logits(student(**forward_kwargs(student, batch)))  # (B, C), or (B, T, C)
    z_t = teacher.logits(batch) if teacher is not None else None  # same shape as z_s
    out, _ = task_loss(task, z_s, batch.labels, z_t, loss_cfg, batch.attention_mask, use_labels=config.alpha < 1)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), config.max_grad_norm)
    opt.step()
    sched.step()
    as_float = lambda t: math.nan if t is None else t.item()  # noqa: E731
    return out.loss.item(), as_float(out.ce), as_float(out.kd)


class _Running:
    """Means of the training loss parts since the last evaluation (logged as train_*)."""

    def __init__(self) -> None:
        self.sums = [0.0, 0.0, 0.0]
        self.n = 0

    def add(self, loss: float, ce: float, kd: float) -> None:
        self.sums = [a + b for a, b in zip(self.sums, (loss, ce, kd))]
        self.n += 1

    def means(self) -> dict[str, float | None]:
        keys = ("train_loss", "train_ce", "train_kd")
        return {k: (None if math.isnan(v) else v / max(1, self.n)) for k, v in zip(keys, self.sums)}


