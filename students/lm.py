"""Causal-LM students (issue 12): distil a smaller causal LM from a store's sparse top-k targets.

    open store -> teacher checkpoint (ths/tll/name) -> packed rows -> student hidden states
    (B, T, H) -> the tokens that have a next token (N, H) -> LM head and sparse KD loss a
    chunk of tokens at a time (students/sparse_loss.py: chunked_kd_loss) -> step

The student's (B, T, V) logits are never made: training and evaluation apply the LM head to
``SparseLossConfig.chunk`` tokens at a time (recomputed in the backward pass), so memory
grows with chunk x V, not with batch x tokens x V. A student whose tokenizer is not the
store's (``--init`` folder with other tokenizer files) is refused before training.

The student is the teacher's architecture (``AutoModelForCausalLM``) with fewer layers,
skip-layer initialised (students/model.py), or ``--init``. Targets per token come from the
store (cached) or from the teacher run on the batch (``--online onnx|pytorch``); online
targets go through the store's own encoding (top-k, quantised log-probabilities), so a
cached and an online run with the same seed train the same student.

Both loss terms are means over the batch's tokens that have a next token (labels != -100);
the gold term is the next-token cross-entropy. ``--distance ce`` means forward KL.
Evaluation (validation, then test): next-token ``accuracy`` (the checkpoint metric),
``perplexity`` = exp(mean CE), ``ece`` and ``brier`` of the next-token distributions (per
token, logitstore/calibration.py: the top-1 probability into 15 bins a chunk at a time, and
sum_v p_v^2 - 2 p_y + 1, exact since a chunk holds whole vocabulary rows),
``top1_agreement`` with the teacher's top-1 id and ``kl``, KL(teacher || student) with the
tail as one bucket at tau = 1 (renormalised over the kept ids when the store has no lse at
1), on every labelled token of the split.

Sampled stores (``--sample N``): the targets are the drawn ids with weights counts / N (times
p_t / p_s at a stored tau_t other than the sampling temperature), the loss the unbiased
forward-KL estimate (students/sparse_loss.py; other distances and --online are refused);
``kl`` is that estimate at tau = 1 and ``top1_agreement`` uses the most likely drawn id.
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

from logitstore.calibration import ECEBins
from logitstore.store import LogitStore, SplitData, open_store
from logitstore.tasks import IGNORE, get_task
from logitstore.tasks.causal_lm import CausalLM
from logitstore.sampled import Sampled
from logitstore.topk import decode_topk, encode_topk
from students.config import TrainConfig, output_dir
from students.data import Batch, SplitBatches
from students.errors import ConfigError, StoreContentError, StudentInitError
from students.model import build_student
from students.sparse_loss import SampledTargets, SparseLossConfig, SparseTargets, chunked_kd_loss, sparse_distance


def is_lm_store(path: str) -> bool:
    """Whether the store at ``path`` holds a causal-LM top-k layout (trained here)."""
    return isinstance(get_task(open_store(path).meta.task), CausalLM)


def loss_config(config: TrainConfig, store: LogitStore) -> tuple[SparseLossConfig, int | None]:
    """The sparse loss of the run and the store's lse column at tau_t (None when not stored);
    refuses in one line a tau_t whose log-sum-exp the loss needs and the store lacks."""
    kd = config.loss
    try:
        cfg = SparseLossConfig(distance="fkl" if kd.distance == "ce" else kd.distance, tail=config.tail,
                               alpha=kd.alpha, tau_t=kd.tau_t, tau_s=kd.tau_s, beta=config.beta)
    except ValueError as exc:
        raise ConfigError(f"invalid KD loss settings: {exc}", [str(exc)]) from exc
    temps = [float(t) for t in store.meta.temperatures or []]
    column = temps.index(kd.tau_t) if kd.tau_t in temps else None
    if store.meta.sample and cfg.alpha > 0 and (cfg.distance != "fkl" or column is None):
        raise StoreContentError(
            f"store {store.path} holds sampled teacher targets, which serve the forward KL (--distance ce or fkl) "
            f"at a stored temperature ({', '.join(f'{t:g}' for t in temps)}); got --distance {kd.distance} at "
            f"tau_t {kd.tau_t:g} instead: change those, or build a top-k store")
    if cfg.needs_lse and cfg.alpha > 0 and column is None:
        raise StoreContentError(
            f"teacher temperature {kd.tau_t:g} has no stored log-sum-exp in store {store.path} (stored: "
            f"{', '.join(f'{t:g}' for t in temps)}), so the tail mass is unknown there; pick one of those, rebuild "
            f"the store with --temperatures including {kd.tau_t:g}, or use --tail renormalize")
    return cfg, column


def lm_head(student: torch.nn.Module) -> torch.nn.Linear:
    """The student's LM head (logits = hidden @ W.T + b). Raises StudentInitError for a
    model whose logits are not a plain linear map of its last hidden states (a logit
    soft-cap or scale), which the chunked loss could not reproduce."""
    head = student.get_output_embeddings()
    cfg = student.config
    if not isinstance(head, torch.nn.Linear) or getattr(cfg, "final_logit_softcapping", None) \
            or getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):
        raise StudentInitError(f"the student ({type(student).__name__}) does not end in a plain linear LM head, "
                               "which the chunked loss needs; use a Llama-like model (e.g. the teacher's family)")
    return head


def hidden_states(student: torch.nn.Module, batch: Batch, mask: torch.Tensor) -> torch.Tensor:
    """(N, H) final hidden states of the tokens ``mask`` (B, T) selects, without the (B, T, V)
    logits: ``student.base_model`` runs and the LM head is left to the loss."""
    out = student.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return out[0][mask]  # (B, T, H) -> (N, H)


def check_tokenizer(source: str, store: LogitStore) -> None:
    """Refuse (StudentInitError, one line) a student source folder whose tokenizer is not the
    store's (the fingerprint logitstore.data.tokenizer_fingerprint records); a folder without
    tokenizer files is judged by its vocabulary size only (build_student)."""
    from transformers import AutoTokenizer

    from logitstore.data import tokenizer_fingerprint

    folder = Path(source)
    if not ((folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists()):
        return
    try:
        fp = tokenizer_fingerprint(AutoTokenizer.from_pretrained(folder, trust_remote_code=False))
    except Exception as exc:  # transformers raises many kinds for a broken tokenizer folder
        raise StudentInitError(f"cannot load the tokenizer in {source} ({type(exc).__name__}); pass a model "
                               "folder saved with the store's tokenizer") from exc
    if fp != store.meta.tokenizer_fingerprint:
        raise StudentInitError(f"the student at {source} has another tokenizer than store {store.path} (fingerprint "
                               f"{fp[:12]} vs {store.meta.tokenizer_fingerprint[:12]}); initialise from a model with "
                               "the store's tokenizer (its teacher family)")


def _positions(split: SplitData, batch: Batch) -> tuple[torch.Tensor, np.ndarray]:
    """(B, T) bool mask of the tokens with a next token, and their flat token numbers in the
    split (row-major order, the order ``z[mask]`` takes)."""
    mask = batch.labels != IGNORE  # (B, T)
    b, t = np.nonzero(mask.cpu().numpy())
    return mask, split.offsets[batch.rows.numpy()[b]] + t


class Targets:
    """Sparse teacher targets of the selected tokens: from the store (``cached``), or from
    the teacher run on the batch and encoded as the store encodes (``online``)."""

    def __init__(self, store: LogitStore, ckpt: str, split: SplitData, column: int | None,
                 online: str | None = None) -> None:
        self.task = get_task(store.meta.task).for_store(store.meta)
        self.meta, self.column, self.online = store.meta, column, online
        if online and store.meta.sample:
            raise StoreContentError(f"--online is not supported for sampled stores ({store.path}); train from the "
                                    "cached draws (drop --online)")
        self.topk = None if online else self.task.read_topk(store, ckpt, split.name)
        if online == "onnx":
            from logitstore.runtime import make_session

            self.session = make_session(store.checkpoint(ckpt).onnx_path, "cpu", threads=torch.get_num_threads(),
                                        spinning=False).session
        elif online == "pytorch":
            from transformers import AutoModelForCausalLM

            self.model = AutoModelForCausalLM.from_pretrained(store.checkpoint(ckpt).source_path,
                                                              attn_implementation="eager", dtype=torch.float32).eval()

    def _run(self, batch: Batch) -> list[np.ndarray]:
        feed = {"input_ids": batch.input_ids.cpu(), "attention_mask": batch.attention_mask.cpu()}
        if self.online == "onnx":
            return self.session.run(list(self.task.output_names), {k: v.numpy() for k, v in feed.items()})
        with torch.no_grad():
            out = self.model(**feed, use_cache=False)
            return [t.numpy() for t in self.task.graph_outputs(out, feed)]

    def get(self, batch: Batch, mask: torch.Tensor, flat: np.ndarray,
            columns: tuple[int | None, ...] | None = None) -> list[Any]:
        """Targets of the tokens ``mask`` selects (their flat numbers ``flat``), one per lse
        column in ``columns`` (default: the loss's): SparseTargets, or SampledTargets for a
        sampled store."""
        if isinstance(self.topk, Sampled):
            return [self._sampled(flat, c, mask.device) for c in (columns or (self.column,))]
        if self.topk is not None:
            ids, rel, lse = self.topk.ids[flat], self.topk.rel[flat], self.topk.lse[flat]
        else:
            values, top_ids, lse_abs, _ = self._run(batch)
            m = mask.cpu().numpy()
            enc = encode_topk(values[m], top_ids[m], lse_abs[m], self.task.temperatures, self.task.step,
                              self.task.vocab_size)
            dec = decode_topk(enc.ids, enc.logp, enc.lse, self.task.step)
            ids, rel, lse = dec.ids, dec.rel, dec.lse
        dev = mask.device
        ids_t, rel_t = torch.from_numpy(ids).to(dev), torch.from_numpy(rel).to(dev)
        return [SparseTargets(ids_t, rel_t, None if c is None else torch.from_numpy(lse[:, c].copy()).to(dev))
                for c in (columns or (self.column,))]


    def _sampled(self, flat: np.ndarray, column: int | None, device: torch.device) -> SampledTargets:
        """Draws of tokens ``flat`` with weights for tau_t = temperatures[column] (the sampling
        temperature's column when None): counts / N times p_t / p_s (students/sparse_loss.py)."""
        temps = self.task.temperatures
        s_col = temps.index(self.task.sample_temperature)
        col = s_col if column is None else column
        got = self.topk
        log_p = got.rel[flat] / temps[col] - got.lse[flat, col:col + 1]  # (n, S)
        log_ps = got.rel[flat] / temps[s_col] - got.lse[flat, s_col:s_col + 1]  # (n, S)
        w = got.counts[flat] / self.task.sample * np.exp(log_p - log_ps)  # (n, S)
        return SampledTargets(torch.from_numpy(got.ids[flat]).to(device),
                              torch.from_numpy(w.astype(np.float32)).to(device),
                              torch.from_numpy(log_p.astype(np.float32)).to(device))


def _gold_sums(z: torch.Tensor, pred: torch.Tensor, y: torch.Tensor, bins: ECEBins) -> tuple[float, float, float]:
    """(sum of CE, hits, sum of Brier) of one chunk's logits ``z`` (n, V) with top-1 ids
    ``pred`` (n,) against the next tokens ``y`` (n,); adds the top-1 probabilities to ``bins``.
    Each row of ``z`` is a whole vocabulary, so Brier = sum_v p_v^2 - 2 p_y + 1 is exact."""
    logp = torch.log_softmax(z, dim=-1)  # (n, V)
    ce = float(torch.nn.functional.nll_loss(logp, y, reduction="sum"))  # = cross_entropy(z, y)
    p_y = logp.gather(1, y[:, None])[:, 0].exp()  # (n,)
    conf = logp.gather(1, pred[:, None])[:, 0].exp()  # (n,) top-1 probability
    hit = pred == y  # (n,)
    bins.add(conf.double().cpu().numpy(), hit.cpu().numpy())
    sq = logp.mul_(2).exp_().sum(-1)  # (n,) sum_v p_v^2, in place: no second (n, V) tensor
    return ce, float(hit.sum()), float((sq - 2 * p_y + 1).sum())


@torch.no_grad()
def evaluate_lm(student: torch.nn.Module, batches: SplitBatches, targets: Targets | None,
                cfg: SparseLossConfig, device: torch.device) -> Any:
    """EvalResult (students.train) of the student on one split: next-token accuracy,
    perplexity, ``ece`` and ``brier`` of the next-token distributions (logitstore/calibration.py),
    top-1 agreement and KL to the teacher, and the mean KD distance."""
    from students.train import EvalResult

    was = student.training
    student.eval()
    temps = [float(t) for t in batches.store.meta.temperatures or []]
    kl_cfg = SparseLossConfig(tail="bucket" if 1.0 in temps else "renormalize")  # (sampled: the KL estimate)
    kl_col = temps.index(1.0) if 1.0 in temps else None
    sums = {"ce": 0.0, "hit": 0.0, "brier": 0.0, "agree": 0.0, "kl": 0.0, "kd": 0.0}
    bins, n = ECEBins(), 0
    head = lm_head(student)
    for batch in batches.epoch(0):
        batch = batch.to(device)
        mask, flat = _positions(batches.split, batch)
        h, y = hidden_states(student, batch, mask), batch.labels[mask]  # (N, H), (N,)
        tgs = targets.get(batch, mask, flat, (targets.column, kl_col)) if targets is not None else None
        for a in range(0, len(y), cfg.chunk):  # (chunk, V) logits at a time, never (N, V)
            b = min(a + cfg.chunk, len(y))
            z, yc = head(h[a:b]).float(), y[a:b]  # (n, V), (n,)
            pred = z.argmax(-1)  # (n,)
            for key, v in zip(("ce", "hit", "brier"), _gold_sums(z, pred, yc, bins)):
                sums[key] += v
            if tgs is not None:
                tg, kl_tg = tgs[0].cut(a, b), tgs[1].cut(a, b)
                top1 = tg.top1  # (n,) lowest id among ties; the most likely drawn id for a sampled store
                sums["agree"] += float((pred == top1).sum())
                sums["kl"] += float(sparse_distance(z, kl_tg, kl_cfg)) * (b - a)
                sums["kd"] += float(sparse_distance(z, tg, cfg)) * (b - a)
        n += len(y)
    student.train(was)
    ce = sums["ce"] / max(n, 1)
    scores = {"accuracy": sums["hit"] / max(n, 1), "perplexity": math.exp(min(ce, 50.0)), "ece": bins.value(),
              "brier": sums["brier"] / max(n, 1)}
    if targets is not None:
        scores |= {"top1_agreement": sums["agree"] / max(n, 1), "kl": sums["kl"] / max(n, 1)}
    return EvalResult(batches.split.name, n, scores, ce, sums["kd"] / max(n, 1) if targets is not None else None)


@dataclass
class _LMRun:
    """Everything a causal-LM run needs, resolved before the first step."""

    store: LogitStore
    name: str | None
    cfg: SparseLossConfig
    column: int | None
    device: torch.device
    student: torch.nn.Module
    init: Any
    train_split: SplitData
    train_targets: Targets | None
    train_batches: SplitBatches
    evals: list[tuple[SplitBatches, Targets | None]]  # validation, then test if present


def _prepare_lm(config: TrainConfig, console: Console) -> _LMRun:
    from students.train import _read_split, choose_checkpoint, resolve_device

    device = resolve_device(config.device)
    store = open_store(config.store)
    ckpt = choose_checkpoint(store, config)
    cfg, column = loss_config(config, store)
    name = ckpt.name if ckpt is not None else None
    if ckpt is not None:
        console.print(f"teacher checkpoint: {ckpt.name} (--teacher {config.teacher}; val_loss={ckpt.val_loss:.4f})")
    train_split = _read_split(store, "train")
    evals = [_read_split(store, store.meta.validation_split)]
    evals += [_read_split(store, "test")] if "test" in store.split_names() else []
    # The online teacher is loaded before torch is seeded, so it cannot shift the student's RNG.
    train_targets = Targets(store, name, train_split, column, config.online) if config.alpha > 0 and name else None
    eval_targets = [Targets(store, name, s, column, config.online) if name else None for s in evals]
    if config.init is not None:
        check_tokenizer(config.init, store)
    torch.manual_seed(config.seed)
    student, init = build_student(config.init or ckpt.source_path, config.layers, [], int(store.meta.vocab_size),
                                  get_task(store.meta.task))
    student.to(device).train()
    loader = config.loader_config(store.meta.pad_token_id)
    train_batches = SplitBatches(store, train_split, name, loader, shuffle=True, read_logits=False)
    eval_loader = replace(loader, batch_size=config.eval_batch_size)
    evals_b = [(SplitBatches(store, s, name, eval_loader, shuffle=False, read_logits=False), t)
               for s, t in zip(evals, eval_targets)]
    return _LMRun(store, name, cfg, column, device, student, init, train_split, train_targets, train_batches, evals_b)


def train_lm(config: TrainConfig, console: Console) -> Any:
    """`students train` on a causal-LM store (see the module docstring); returns a
    students.train.TrainResult and writes OUT like the other tasks."""
    from students.train import TrainResult, _optimizer, _write_summary

    run = _prepare_lm(config, console)
    steps_per_epoch = len(run.train_batches)
    total = config.optim.total_steps(steps_per_epoch)
    opt, sched = _optimizer(run.student, config.optim, total)
    out = output_dir(config.out)
    (out / "run_config.json").write_text(json.dumps(
        {**config.to_dict(), "checkpoint": run.name, "loss": asdict(run.cfg), "lse_column": run.column,
         "student_init": asdict(run.init), "store_meta": run.store.meta.to_dict()}, indent=2) + "\n")
    best, losses, tokens, seconds = _loop(run, config, opt, sched, total, steps_per_epoch, out)
    _, best_step, best_res, state = best
    run.student.load_state_dict(state)
    test = evaluate_lm(run.student, *run.evals[1], run.cfg, run.device) if len(run.evals) > 1 else None
    run.student.save_pretrained(out)
    run.store.save_tokenizer(out)
    result = TrainResult(out, run.name, "accuracy", len(losses), best_step, best_res, test, losses, seconds,
                         tokens / seconds)
    _write_summary(result, console)
    return result


def _loop(run: _LMRun, config: TrainConfig, opt: Any, sched: Any, total: int, steps_per_epoch: int,
          out: Path) -> tuple[Any, list[float], int, float]:
    """The training steps with their evaluations; returns (best, losses, tokens, seconds of
    training without evaluation). ``best`` = (score, step, EvalResult, weights)."""
    from students.train import _eval_due

    losses: list[float] = []
    best = None
    step, epoch, tokens, started, eval_s = 0, 0, 0, time.perf_counter(), 0.0
    with open(out / "metrics.jsonl", "w") as log:
        while step < total:
            for batch in run.train_batches.epoch(epoch):
                losses.append(_step(run, batch.to(run.device), config, opt, sched))
                step += 1
                tokens += int((batch.labels != IGNORE).sum())
                if _eval_due(step, total, steps_per_epoch, config.eval_every):
                    tick = time.perf_counter()
                    res = evaluate_lm(run.student, *run.evals[0], run.cfg, run.device)
                    log.write(json.dumps({"step": step, "epoch": epoch + 1, **res.to_dict(),
                                          "train_loss": losses[-1]}) + "\n")
                    log.flush()
                    if config.save_checkpoints:  # OUT/checkpoint-<step>: a teacher `logitstore build` reads
                        run.student.save_pretrained(out / f"checkpoint-{step}")
                        run.store.save_tokenizer(out / f"checkpoint-{step}")
                    if best is None or res.score("accuracy") > best[0]:
                        weights = {k: v.detach().clone() for k, v in run.student.state_dict().items()}
                        best = (res.score("accuracy"), step, res, weights)
                    eval_s += time.perf_counter() - tick
                if step == total:
                    break
            epoch += 1
    return best, losses, tokens, time.perf_counter() - started - eval_s


def _step(run: _LMRun, batch: Batch, config: TrainConfig, opt: Any, sched: Any) -> float:
    """One optimizer step; returns the loss."""
    mask, flat = _positions(run.train_split, batch)
    h = hidden_states(run.student, batch, mask)  # (N, H); the (N, V) logits exist a chunk at a time, in the loss
    tg = run.train_targets.get(batch, mask, flat)[0] if run.train_targets is not None else None
    loss, _, _ = chunked_kd_loss(h, lm_head(run.student), batch.labels[mask] if config.alpha < 1 else None, tg,
                                 run.cfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.student.parameters(), config.max_grad_norm)
    opt.step()
    sched.step()
    return loss.item()


