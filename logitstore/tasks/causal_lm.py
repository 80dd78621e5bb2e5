"""Causal language modelling: packed text, a sparse top-k teacher distribution per token.

Data: one text column. Each document is tokenized without special tokens and followed by
the tokenizer's EOS token (the document boundary); the documents of a split are joined in
order and cut into rows (blocks) of ``max_length`` tokens. A last block of one token (nothing
to predict) is dropped. A row's labels are its next tokens (``labels[t] = ids[t + 1]``), -100
on the row's last token; ``example_id`` is the document its first token belongs to.

Teacher: the exported graph runs the model (``use_cache=False``, eager attention) and keeps,
per token, the top-K logits and ids, the row's log-sum-exp at each build temperature and the
next-token negative log-likelihood at tau = 1, so the (B, T, vocab) logits never leave ONNX
Runtime. Stored: logitstore/topk.py (store format 3, written as 4 since the block records;
layout ``causal-lm-topk``).
A checkpoint's ``val_loss`` is the mean next-token cross-entropy over the validation split's
labelled tokens, computed in the graph from the full logits (exact, not from the top-k);
``val_score`` is next-token accuracy: the stored top-1 id (lowest id among quantisation ties)
equals the next token.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from logitstore.calibration import calibration_of_probs, ece
from logitstore.errors import DataError, TeacherOutputError
from logitstore.store import SplitData
from logitstore.tasks.base import IGNORE, KDTerm, Task, content_sha256
from logitstore.topk import DEFAULT_STEP, decode_topk, encode_topk, id_dtype, whole

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from logitstore.data import DataConfig

#: Arrays of a top-k entry; ``nll`` only in the validation split (the checkpoint's val_loss).
TOPK_ARRAYS = ("ids", "logp", "lse")


class CausalLM(Task):
    name = "causal-lm"
    aliases = ("lm", "clm")
    layout = "causal-lm-topk"
    auto_class = "AutoModelForCausalLM"
    architecture_suffix = "ForCausalLM"
    metrics = ("accuracy",)
    text_columns = ("text",)
    label_column = ""  # next-token labels come from the text itself
    token_labels = True
    format_version = 3
    encoding = "topk-q8"
    forward_kwargs = {"use_cache": False}
    output_names = ("topk_values", "topk_ids", "lse", "nll")
    scores_every_split = False  # the exact next-token loss is kept for the validation split only
    #: Build settings (StoreMeta top_k, temperatures, logp_step): for_store() sets them.
    top_k: int = 50
    temperatures: tuple[float, ...] = (1.0,)
    step: float = DEFAULT_STEP
    vocab_size: int = 1 << 16

    @property
    def fingerprint_tag(self) -> str:
        return f"|{self.name}|k{self.top_k}|t{','.join(map(repr, self.temperatures))}"

    def for_store(self, meta: Any) -> "CausalLM":
        task = copy.copy(self)
        task.top_k, task.temperatures = int(meta.top_k), tuple(float(t) for t in meta.temperatures)
        task.step, task.vocab_size = float(meta.logp_step), int(meta.vocab_size)
        return task

    def for_build(self, cfg: Any) -> "CausalLM":
        """With ``--sample N`` the sampled variant (logitstore/tasks/causal_lm_sampled.py)."""
        from logitstore.tasks import get_task

        return get_task("causal-lm-sampled") if cfg.sample else self  # type: ignore[return-value]

    @staticmethod
    def vocab(model_cfg: Any, tokenizer: Any) -> int:
        """The teacher's vocabulary size (its config's; padded vocabularies are said)."""
        from logitstore.progress import console

        vocab = int(getattr(model_cfg, "vocab_size", 0) or len(tokenizer))
        if vocab > len(tokenizer):
            console.print(f"note: the teacher's vocabulary ({vocab:,}) is larger than its tokenizer's "
                          f"({len(tokenizer):,}, padded); the padded ids take part in the top-k and the log-sum-exp")
        return vocab

    def store_fields(self, cfg: Any, model_cfg: Any, tokenizer: Any) -> dict[str, Any]:
        vocab = self.vocab(model_cfg, tokenizer)
        if not 1 <= cfg.top_k <= vocab:
            raise DataError(f"--top-k must be between 1 and the vocabulary size {vocab:,}; got {cfg.top_k} instead")
        return {"format_version": self.format_version, "top_k": int(cfg.top_k), "vocab_size": vocab,
                "temperatures": [float(t) for t in cfg.temperatures], "logp_step": float(cfg.logp_step)}

    # ------------------------------------------------------------------ data
    def config_problems(self, cfg: "DataConfig") -> list[str]:
        if len(cfg.text_columns) != 1:
            return [f"causal-lm reads one text column; got {list(cfg.text_columns)} instead"]
        return []

    def resolve_labels(self, splits: dict[str, Any], label_column: str,
                       model_names: list[str] | None) -> tuple[list[str], dict[Any, int]]:
        return [], {}  # labels are next tokens; the store records vocab_size instead

    def tokenize(self, name: str, ds: Any, tokenizer: Any, cfg: "DataConfig", label_map: dict[Any, int],
                 input_names: Sequence[str]) -> tuple[SplitData, str]:
        texts = ds[cfg.text_columns[0]]
        eos = tokenizer.eos_token_id
        if eos is None:
            raise DataError("causal-lm packs documents with the tokenizer's EOS token, and this tokenizer has none; "
                            "save the tokenizer with an eos_token")
        ids = tokenizer([str(t) if t is not None else "" for t in texts], add_special_tokens=False)["input_ids"]
        empty = [i for i, (t, row) in enumerate(zip(texts, ids)) if t is None or not row]
        if empty:
            raise DataError(f"split {name!r} has {len(empty)} text(s) with no tokens (first: row {empty[0]}); "
                            "drop empty texts")
        lengths = np.fromiter((len(r) + 1 for r in ids), dtype=np.int64, count=len(ids))
        stream = np.fromiter((t for r in ids for t in (*r, eos)), dtype=np.int32, count=int(lengths.sum()))
        if len(stream) < 2:  # (each text gives >= 2 with its EOS; a guard)
            raise DataError(f"split {name!r} has fewer than 2 tokens; a causal LM needs text to predict")
        doc_of = np.repeat(np.arange(len(ids), dtype=np.int64), lengths)  # (T,) document of each token
        starts = np.arange(0, len(stream), cfg.max_length)
        ends = np.minimum(starts + cfg.max_length, len(stream))
        keep = ends - starts >= 2  # a one-token block has nothing to predict
        starts, ends = starts[keep], ends[keep]
        flat = stream[:ends[-1]]
        offsets = np.concatenate([[0], ends]).astype(np.int64)
        labels = np.concatenate([flat[1:], [IGNORE]]).astype(np.int64)  # (T,) next token
        labels[ends - 1] = IGNORE  # no next token inside the row
        example_ids = np.asarray(ds["__example_id"], dtype=np.int64)[doc_of[starts]]
        sha = content_sha256(zip(map(str, texts), ds["__example_id"]))
        return SplitData(name, flat, offsets, labels, example_ids), sha

    # ------------------------------------------------------------------ teacher graph
    def teacher_problem(self, num_labels: int, label_names: list[str], store_labels: list[str]) -> str | None:
        return None  # no label head; the tokenizer check covers the vocabulary

    def graph_outputs(self, output: Any, feed: dict[str, "torch.Tensor"]) -> tuple["torch.Tensor", ...]:
        """(topk_values (B, T, K) float32, topk_ids (B, T, K) int64, lse (B, T, n_tau) float32 =
        logsumexp(z / tau), nll (B, T) float32 = -log p(next token), 0 on the last position)."""
        import torch

        z = output.logits.float()  # (B, T, V)
        values, ids = torch.topk(z, self.top_k, dim=-1)  # (B, T, K)
        lse = torch.stack([torch.logsumexp(z / t, dim=-1) for t in self.temperatures], dim=-1)  # (B, T, n_tau)
        lse1 = torch.logsumexp(z, dim=-1)  # (B, T)
        nxt = torch.gather(z[:, :-1], -1, feed["input_ids"][:, 1:, None])[..., 0] - lse1[:, :-1]  # (B, T-1)
        return values, ids, lse, torch.nn.functional.pad(-nxt, (0, 1))

    def graph_axes(self) -> dict[str, dict[int, str]]:
        return {n: {0: "batch", 1: "sequence"} for n in self.output_names}

    def parity(self, got: list[np.ndarray], ref: list[np.ndarray]) -> float:
        """Max |diff| of values, lse and nll; inf when an id differs where its value is not
        tied with a neighbour in the top-k (within 1e-4, or twice the largest value difference
        of the two runtimes: two values that close may swap places), or sits in the last kept slot."""
        values, ids = ref[0], ref[1]
        tol = max(1e-4, 2 * float(np.abs(got[0] - values).max(initial=0.0)))
        tied = np.zeros(ids.shape, dtype=bool)
        gap = np.abs(np.diff(values, axis=-1)) < tol  # (B, T, K-1)
        tied[..., 1:] |= gap
        tied[..., :-1] |= gap
        tied[..., -1] = True  # the K-th value may tie with the (K+1)-th, which is not kept
        if ((got[1] != ids) & ~tied).any():
            return float("inf")
        return super().parity([got[0], got[2], got[3]], [ref[0], ref[2], ref[3]])

    # ------------------------------------------------------------------ store entries
    def entry_arrays(self, store_meta: Any, split: str, tokens: int) -> dict[str, tuple[tuple[int, ...], str]]:
        k, n_tau = int(store_meta.top_k), len(store_meta.temperatures)
        arrays = {"ids": ((tokens, k), id_dtype(int(store_meta.vocab_size)).name), "logp": ((tokens, k), "uint8"),
                  "lse": ((tokens, n_tau), "float32")}
        if split == store_meta.validation_split:
            arrays["nll"] = ((tokens,), "float32")
        return arrays

    #: Fill values of the entry arrays (what a missing chunk reads as).
    fills: ClassVar[dict[str, Any]] = {"ids": 0, "logp": 255, "lse": float("nan"), "nll": float("nan")}

    def prepare_entry(self, store: Any, ckpt: str, data: SplitData, spec: Any) -> Any:
        """The entry's arrays (``entry_arrays``: ids, logp, lse, ...; nll in the validation
        split) and block records."""
        task = self.for_store(store.meta)
        arrays = task.entry_arrays(store.meta, data.name, int(data.offsets[-1]))
        return store.prepare_entry(ckpt, data.name, len(data), spec.chunk_rows,
                                   {k: (shape, dt, task.fills[k]) for k, (shape, dt) in arrays.items()})

    def write_block(self, store: Any, ckpt: str, data: SplitData, session: Any, spec: Any, index: int,
                    rows: np.ndarray, on_rows: Any = None) -> float | None:
        """Run the teacher over the block's rows (``run_rows``), encode them (``encode_block``)
        and write them, then the block's record (logitstore/blocks.py runs the blocks, resumes
        and repairs). The same rows give the same bytes whatever else is written (each row's
        draws of the sampled variant are seeded by the row)."""
        task = self.for_store(store.meta)
        out = task.run_rows(data, rows, session, spec, store.meta.pad_token_id, on_rows)
        block, err = task.encode_block(out)
        if data.name != store.meta.validation_split:
            block.pop("nll")
        err = float(np.float32(err))
        store.write_entry_block(ckpt, data.name, index, int(data.offsets[rows[0]]), block, max_abs_err=err)
        return err

    def run_rows(self, data: SplitData, rows: np.ndarray, session: Any, cfg: Any, pad_id: int,
                 advance: Any = None) -> dict[str, np.ndarray]:
        """The graph's outputs for ``rows`` of a split, each (their tokens, ...) end to end,
        in inference batches of ``cfg.token_budget`` padded tokens (a BlockSpec or a config)."""
        from logitstore.infer import plan_batches
        from logitstore.padding import pad_batch

        lengths = data.lengths[rows]
        first = int(data.offsets[rows[0]])
        names = tuple(n for n in session.input_names if n not in self.extra_inputs)
        parts: dict[str, list[tuple[int, np.ndarray]]] = {n: [] for n in self.output_names}
        for batch in plan_batches(lengths, cfg.token_budget):
            feed = pad_batch(data.input_ids, data.offsets, None, rows[batch], pad_id, names)
            feed |= self.row_feed(data, rows[batch], feed)
            res = session.session.run(list(self.output_names), feed)
            for j, i in enumerate(batch):
                at = int(data.offsets[rows[i]]) - first
                for n, v in zip(self.output_names, res):
                    parts[n].append((at, v[j, :lengths[i]]))
            if advance is not None:
                advance(len(batch))
        return {n: np.concatenate([v for _, v in sorted(p, key=lambda x: x[0])]) for n, p in parts.items()}

    def row_feed(self, data: SplitData, rows: np.ndarray, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The ``extra_inputs`` for ``rows`` of a split (padded like ``feed``): none here."""
        return {}

    def encode_block(self, out: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """A block's graph outputs as the entry's arrays (logitstore/topk.py), and its largest
        quantisation error (nats)."""
        enc = encode_topk(out["topk_values"], out["topk_ids"], out["lse"], self.temperatures, self.step,
                          self.vocab_size)
        return {"ids": enc.ids, "logp": enc.logp, "lse": enc.lse, "nll": out["nll"].astype(np.float32)}, enc.max_abs_err

    def read_topk(self, store: Any, ckpt: str, split: str, start: int = 0, stop: int | None = None) -> Any:
        """A checkpoint's decoded top-k (logitstore.topk.TopK) for tokens [start, stop) of a split."""
        raw = store.read_entry(ckpt, split, TOPK_ARRAYS, start, stop)
        if not whole(raw["ids"], raw["lse"]):
            from logitstore.errors import StoreCorruptError

            raise StoreCorruptError(f"top-k entry {ckpt}/{split} of store {store.path} has missing chunks; rerun "
                                    "the build to repair it")
        return decode_topk(raw["ids"], raw["logp"], raw["lse"], float(store.meta.logp_step))

    def checkpoint_scores(self, store: Any, ckpt: str, split: SplitData) -> dict[str, float]:
        """Mean next-token NLL (from the graph, exact), top-1 accuracy and ECE of the top-1
        probability (exact: kept logit and the log-sum-exp at tau 1, when stored) over labelled
        tokens. No Brier score: it needs every id's probability, and the store keeps the top k."""
        nll = store.read_entry(ckpt, split.name, ("nll",))["nll"]
        if not np.isfinite(nll).all():
            raise TeacherOutputError(f"checkpoint {ckpt} gave NaN or inf next-token losses on split {split.name!r}")
        top = self.read_topk(store, ckpt, split.name)
        top1 = top.ids[np.arange(len(top.ids)), np.argmax(top.rel, axis=1)]  # (T,) lowest id among ties
        m = split.labels != IGNORE
        out = {"loss": float(nll[m].mean()), "accuracy": float((top1[m] == split.labels[m]).mean())}
        if 1.0 in self.for_store(store.meta).temperatures:
            col = self.for_store(store.meta).temperatures.index(1.0)
            conf = np.exp(top.rel.max(axis=1) - top.lse[:, col])  # (T,) top-1 probability at tau 1
            out["ece"] = ece(conf[m], top1[m] == split.labels[m])
        return out

    # ------------------------------------------------------------------ scores of dense logits, KD
    def scores(self, logits: np.ndarray, split: SplitData, label_names: list[str]) -> dict[str, float]:
        """Next-token CE, accuracy, ECE and Brier of dense logits (T, V) (a student's) over labelled tokens."""
        m = split.labels != IGNORE
        z = logits[m].astype(np.float64)  # (N, V)
        y = split.labels[m]
        zmax = z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z - zmax).sum(axis=1)) + zmax[:, 0]
        return {"loss": float((lse - z[np.arange(len(y)), y]).mean()), "accuracy": float((z.argmax(1) == y).mean()),
                **calibration_of_probs(np.exp(z - lse[:, None]), y)}

    def kd_terms(self, student: "torch.Tensor", labels: "torch.Tensor", teacher: "torch.Tensor | None",
                 attention_mask: "torch.Tensor") -> tuple[list[KDTerm], int]:
        """Not used: causal-LM students train on sparse targets (students/lm.py, students/sparse_loss.py)."""
        raise NotImplementedError("causal-LM stores hold sparse top-k targets; students/lm.py trains on them")
