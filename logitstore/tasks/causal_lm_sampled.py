"""Causal language modelling with sampled teacher targets (RS-KD style, ``--sample N``).

The data, packing and labels are causal_lm.py's. Instead of the top-k, the teacher graph
draws ``N`` ids per token from its distribution at the sampling temperature ``s``
(``--sample-temperature``, default 1) by the inverse CDF of uniform numbers fed to it
(graph input ``draws`` (B, T, N), seeded per row: logitstore/sampled.py ``row_draws``), so
the (B, T, vocab) logits still never leave the runtime; the store keeps the distinct ids
with their counts, their quantised log-probabilities and the row's log-sum-exp at each build
temperature (layout ``causal-lm-sampled``, logitstore/sampled.py).

The inverse CDF is two-level (blocks of ``S = ceil(sqrt(V))`` ids: pick the block from the
cumulative block masses, then the id inside it), so it needs O(N sqrt V) memory per token,
not O(N V). Float rounding can put a draw within ~1e-7 of a boundary on the other side; a
draw that lands past the last id of positive probability in its block takes that id.

The task is its own registry entry (``causal-lm-sampled``) so that a reader that knows only
the top-k layout refuses a sampled store in one line ("store task ... is not known").
``val_score`` (accuracy) is the fraction of labelled tokens whose most likely drawn id is
the next token; ``val_loss`` is the exact next-token CE from the graph, as for the top-k.
"""
from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from logitstore.errors import StoreCorruptError, TeacherOutputError
from logitstore.sampled import decode_sampled, encode_sampled, row_draws, whole_sampled
from logitstore.store import SplitData
from logitstore.tasks.base import IGNORE
from logitstore.tasks.causal_lm import CausalLM
from logitstore.topk import id_dtype

if TYPE_CHECKING:  # pragma: no cover
    import torch

SAMPLED_ARRAYS = ("ids", "counts", "logp", "lse")
MAX_DRAWS = 255  # counts are uint8


class CausalLMSampled(CausalLM):
    name = "causal-lm-sampled"
    aliases = ()
    layout = "causal-lm-sampled"
    encoding = "sample-q8"
    output_names = ("sample_ids", "sample_values", "zmax", "lse", "nll")
    extra_inputs = ("draws",)
    fills: ClassVar[dict[str, Any]] = {"ids": 0, "counts": 0, "logp": 255, "lse": float("nan"),
                                       "nll": float("nan")}
    sample: int = 16
    sample_temperature: float = 1.0
    sample_seed: int = 0

    @property
    def fingerprint_tag(self) -> str:
        return f"|{self.name}|n{self.sample}|s{self.sample_temperature!r}|t{','.join(map(repr, self.temperatures))}"

    def for_build(self, cfg: Any) -> CausalLM:
        return self  # (--task causal-lm-sampled needs --sample: build_problems)

    def build_problems(self, cfg: Any) -> list[str]:
        if not 1 <= cfg.sample <= MAX_DRAWS or not cfg.sample_temperature > 0:
            return [f"--sample must be between 1 and {MAX_DRAWS} and --sample-temperature > 0 for {self.name}; "
                    f"got {cfg.sample} and {cfg.sample_temperature} instead"]
        return []

    def for_store(self, meta: Any) -> "CausalLMSampled":
        task = copy.copy(self)
        task.temperatures = tuple(float(t) for t in meta.temperatures)
        task.step, task.vocab_size = float(meta.logp_step), int(meta.vocab_size)
        task.sample, task.sample_seed = int(meta.sample), int(meta.sample_seed)
        task.sample_temperature = float(meta.sample_temperature)
        return task

    def store_fields(self, cfg: Any, model_cfg: Any, tokenizer: Any) -> dict[str, Any]:
        vocab = self.vocab(model_cfg, tokenizer)
        temps = [float(t) for t in cfg.temperatures]
        if float(cfg.sample_temperature) not in temps:  # the loss needs the lse at the sampling temperature
            temps.append(float(cfg.sample_temperature))
        return {"format_version": self.format_version, "top_k": None, "temperatures": temps,
                "vocab_size": vocab, "logp_step": float(cfg.logp_step), "sample": int(cfg.sample),
                "sample_temperature": float(cfg.sample_temperature), "sample_seed": int(cfg.sample_seed)}

    # ------------------------------------------------------------------ teacher graph
    def extra_feed(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        b, t = feed["input_ids"].shape
        return {"draws": np.random.default_rng(0).random((b, t, self.sample), dtype=np.float32)}

    def row_feed(self, data: SplitData, rows: np.ndarray, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        b, t = feed["input_ids"].shape
        draws = np.zeros((b, t, self.sample), dtype=np.float32)  # (B, T, N); padding positions draw 0
        for j, r in enumerate(rows):
            n = int(data.lengths[r])
            draws[j, :n] = row_draws(self.sample_seed, data.name, int(r), n, self.sample)
        return {"draws": draws}

    def graph_outputs(self, output: Any, feed: dict[str, "torch.Tensor"]) -> tuple["torch.Tensor", ...]:
        """(sample_ids (B, T, N) int64, sample_values (B, T, N) float32 their logits, zmax (B, T),
        lse (B, T, n_tau) = logsumexp(z / tau), nll (B, T) as in the top-k graph)."""
        import torch

        z = output.logits.float()  # (B, T, V)
        v = int(self.vocab_size)  # (a Python int: the traced shape would make the block sizes dynamic)
        zmax = z.max(dim=-1, keepdim=True).values  # (B, T, 1)
        p = torch.softmax((z - zmax) / self.sample_temperature, dim=-1)  # (B, T, V)
        size = math.isqrt(v - 1) + 1  # ids per block, ceil(sqrt(V))
        nb = -(-v // size)
        pb = torch.nn.functional.pad(p, (0, nb * size - v)).unflatten(-1, (nb, size))  # (B, T, nb, S)
        mass = pb.sum(-1)  # (B, T, nb)
        cm = mass.cumsum(-1)  # (B, T, nb)
        u = feed["draws"].float() * cm[..., -1:]  # (B, T, N)
        blk = (cm.unsqueeze(-2) <= u.unsqueeze(-1)).long().sum(-1).clamp(max=nb - 1)  # (B, T, N)
        r = u - (cm.gather(-1, blk) - mass.gather(-1, blk))  # (B, T, N) left inside the block
        inner = pb.gather(2, blk.unsqueeze(-1).expand(-1, -1, -1, size))  # (B, T, N, S)
        pos = (inner.cumsum(-1) <= r.unsqueeze(-1)).long().sum(-1)  # (B, T, N)
        last = ((inner > 0).long() * torch.arange(size)).max(-1).values  # (B, T, N) last id with mass
        ids = (blk * size + torch.minimum(pos, last)).clamp(max=v - 1)  # (B, T, N)
        lse = torch.stack([torch.logsumexp(z / t, dim=-1) for t in self.temperatures], dim=-1)  # (B, T, n_tau)
        lse1 = torch.logsumexp(z, dim=-1)  # (B, T)
        nxt = torch.gather(z[:, :-1], -1, feed["input_ids"][:, 1:, None])[..., 0] - lse1[:, :-1]  # (B, T-1)
        return ids, z.gather(-1, ids), zmax[..., 0], lse, torch.nn.functional.pad(-nxt, (0, 1))

    def parity(self, got: list[np.ndarray], ref: list[np.ndarray]) -> float:
        """Max |diff| of the drawn ids' logits (where both drew the same id), zmax, lse and nll;
        inf when more than 1 draw in 100 differs. A draw within the runtimes' CDF difference of
        a boundary lands on a neighbouring id: 0.26% of the draws on SmolLM2-135M (16 per token,
        512 tokens, logits within 8e-5); a broken sampler differs almost everywhere."""
        same = got[0] == ref[0]
        if (~same).mean() > 1e-2:
            return float("inf")
        vals = [np.where(same, got[1], 0.0), np.where(same, ref[1], 0.0)]
        return super(CausalLM, self).parity([vals[0], *got[2:]], [vals[1], *ref[2:]])  # Task.parity

    # ------------------------------------------------------------------ store entries
    def entry_arrays(self, store_meta: Any, split: str, tokens: int) -> dict[str, tuple[tuple[int, ...], str]]:
        n, n_tau = int(store_meta.sample), len(store_meta.temperatures)
        arrays = {"ids": ((tokens, n), id_dtype(int(store_meta.vocab_size)).name), "counts": ((tokens, n), "uint8"),
                  "logp": ((tokens, n), "uint8"), "lse": ((tokens, n_tau), "float32")}
        if split == store_meta.validation_split:
            arrays["nll"] = ((tokens,), "float32")
        return arrays

    def encode_block(self, out: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        enc = encode_sampled(out["sample_ids"], out["sample_values"], out["zmax"], out["lse"], self.temperatures,
                             self.step, self.vocab_size)
        block = {"ids": enc.ids, "counts": enc.counts, "logp": enc.logp, "lse": enc.lse,
                 "nll": out["nll"].astype(np.float32)}
        return block, enc.max_abs_err

    def read_topk(self, store: Any, ckpt: str, split: str, start: int = 0, stop: int | None = None) -> Any:
        """A checkpoint's decoded draws (logitstore.sampled.Sampled) for tokens [start, stop)."""
        raw = store.read_entry(ckpt, split, SAMPLED_ARRAYS, start, stop)
        if not whole_sampled(raw["counts"], raw["lse"], int(store.meta.sample)):
            raise StoreCorruptError(f"sampled entry {ckpt}/{split} of store {store.path} has missing chunks; rerun "
                                    "the build to repair it")
        return decode_sampled(raw["ids"], raw["counts"], raw["logp"], raw["lse"], float(store.meta.logp_step))

    def checkpoint_scores(self, store: Any, ckpt: str, split: SplitData) -> dict[str, float]:
        """Mean next-token NLL (from the graph, exact) and the accuracy of the most likely drawn id."""
        nll = store.read_entry(ckpt, split.name, ("nll",))["nll"]
        if not np.isfinite(nll).all():
            raise TeacherOutputError(f"checkpoint {ckpt} gave NaN or inf next-token losses on split {split.name!r}")
        got = self.read_topk(store, ckpt, split.name)
        best = got.ids[np.arange(len(got.ids)), np.argmax(np.where(got.counts > 0, got.rel, -np.inf), axis=1)]
        m = split.labels != IGNORE
        return {"loss": float(nll[m].mean()), "accuracy": float((best[m] == split.labels[m]).mean())}
