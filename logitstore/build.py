"""Build a logit store: data -> tokens -> (per checkpoint) ONNX export -> inference -> store.

One-way flow: load and tokenize every split once, write them, then for each teacher
checkpoint export it, run it over every split in blocks of ``chunk_rows`` rows (one Zarr
chunk each; logitstore/blocks.py) and write each block, then its record, in this process or
on Ray actors (``--ray``, logitstore/ray_build.py). A rerun computes the blocks without a
record; an entry is marked complete only after every row of every split is written and
its validation loss and score are computed from the stored logits.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from logitstore import __version__, storage
from logitstore.checkpoints import Checkpoint, discover, read_config, weights_sha256
from logitstore.data import (DataConfig, dataset_fingerprint, load_splits, source_file, tokenize_split,
                             tokenizer_fingerprint, truncation_warning)
from logitstore.format import ENCODINGS
from logitstore.errors import (CheckpointError, DataError, LogitStoreError, StoreCorruptError,
                               StoreMismatchError)
from logitstore.export import PARITY_TOLERANCE
from logitstore.format import FORMAT_VERSION, CheckpointMeta, StoreMeta
from logitstore.progress import console
from logitstore.scoring import scored
from logitstore.store import DEFAULT_LOGIT_CHUNK_ROWS, TOKENIZER_FILES, LogitStore, SplitData
from logitstore.tasks import Task, get_task, task_of_architecture, task_of_folders
from logitstore.teacher import check_teacher, open_teacher
from logitstore.transfer import with_transfer
from logitstore.writer import StoreWriter


@dataclass(frozen=True)
class BuildConfig:
    """Everything ``logitstore build`` needs; validated at construction.

    ``task`` None means the task the teachers' config.architectures name (else sequence
    classification); ``text_columns``, ``label_column`` and ``metric`` None mean the task's
    defaults (the task's ``text_columns``, ``label_column`` and ``default_metric``).
    ``stride``: tasks that window long texts (QA) only.
    """

    teachers: tuple[Path, ...]
    data: str
    out: Path | str  # a folder, or a store URL (issue 13: logitstore/storage.py)
    tokenizer: Path | None = None
    labels: tuple[str, ...] | None = None
    text_columns: tuple[str, ...] | None = None
    label_column: str | None = None
    validation_split: str = "validation"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    max_length: int = 128
    encoding: str = "fp16"
    chunk_rows: int = DEFAULT_LOGIT_CHUNK_ROWS
    token_budget: int = 16384
    provider: str = "auto"
    threads: int | None = None
    parity_tolerance: float = PARITY_TOLERANCE
    metric: str | None = None
    task: str | None = None
    stride: int = 32
    top_k: int = 50  # causal-lm: kept ids per token, and the temperatures whose log-sum-exp is stored
    temperatures: tuple[float, ...] = (1.0,)
    logp_step: float = 0.125  # causal-lm: quantisation step (nats) of the stored log-probabilities
    sample: int = 0  # causal-lm: draws per token (RS-KD) instead of the top-k, at sample_temperature, seeded
    sample_temperature: float = 1.0
    sample_seed: int = 0
    runtime: str = "onnx"  # or "torch": the teacher runs in PyTorch (logitstore/torch_runtime.py)
    transfer: str | None = None  # unlabelled texts: the `transfer` split (logitstore/transfer.py)
    ray: str | None = None  # --ray: "local" (a local Ray cluster) or a cluster address; None: this process
    actors: int | None = None  # --actors: Ray actors (default: one per GPU, else one per CPU of the cluster)
    data_config: DataConfig = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "teachers", tuple(Path(t) for t in self.teachers))
        object.__setattr__(self, "out", storage.location(self.out))
        if self.tokenizer is not None:
            object.__setattr__(self, "tokenizer", Path(self.tokenizer))
        try:
            task = get_task(self.task) if self.task else task_of_folders(self.teachers)
        except ValueError as exc:
            raise DataError(f"--task: {exc}") from exc
        task = task.for_build(self)  # (causal LM: the sampled variant with --sample)
        object.__setattr__(self, "task", task.name)
        object.__setattr__(self, "text_columns", tuple(self.text_columns or task.text_columns))
        object.__setattr__(self, "label_column", self.label_column or task.label_column)
        object.__setattr__(self, "metric", self.metric or task.default_metric)
        problems = []
        if not self.teachers and self.tokenizer is None:
            problems.append("give at least one --teacher, or --tokenizer for a store of token ids only")
        if self.encoding not in ENCODINGS:
            problems.append(f"--dtype must be one of {', '.join(ENCODINGS)}; got {self.encoding!r} instead")
        if (self.top_k < 1 or not self.temperatures or any(not t > 0 for t in self.temperatures)
                or not self.logp_step > 0):
            problems.append(f"--top-k must be >= 1, --temperatures positive numbers and --logp-step > 0; got "
                            f"{self.top_k}, {','.join(map(str, self.temperatures))} and {self.logp_step} instead")
        if self.runtime not in ("onnx", "torch"):
            problems.append(f"--runtime must be onnx or torch; got {self.runtime!r} instead")
        problems += task.build_problems(self)
        if self.actors is not None and (self.actors < 1 or self.ray is None):
            problems.append(f"--actors needs --ray and must be >= 1; got {self.actors} instead")
        if self.chunk_rows < 1:
            problems.append(f"--chunk-rows must be >= 1; got {self.chunk_rows} instead")
        if self.token_budget < self.max_length:
            problems.append(f"--token-budget must be >= --max-length ({self.max_length}); got {self.token_budget} instead")
        if self.metric not in task.metrics:
            problems.append(f"--metric must be one of {', '.join(task.metrics)} for {task.name}; "
                            f"got {self.metric!r} instead")
        if problems:
            raise DataError("; ".join(problems))
        object.__setattr__(self, "data_config", DataConfig(
            str(self.data), task, self.text_columns, self.label_column, self.validation_split,
            tuple(self.split_fractions), self.split_seed, self.max_length, self.stride))

    @property
    def task_def(self) -> Task:
        """The build's Task (``task`` holds its canonical name)."""
        return self.data_config.task


@dataclass(frozen=True)
class BuildResult:
    store: Path | str
    built: list[str]
    skipped: list[str]
    seconds: float


def build_store(cfg: BuildConfig) -> BuildResult:
    """Build (or resume, or extend) the store at ``cfg.out``. Raises LogitStoreError subclasses."""
    # Faults (issue 10): one build per store at a time (a lock beside it, logitstore/lock.py),
    # and a full disk or a folder it may not write ends in one line, not a traceback.
    import contextlib

    from logitstore.cache import using_cache
    from logitstore.lock import exclusive
    from logitstore.oserrors import writing

    exports = using_cache() if cfg.teachers else contextlib.nullcontext()  # no cache prune while it builds
    if cfg.ray is not None and cfg.teachers:  # issue 13: blocks on Ray actors (logitstore/ray_build.py)
        from logitstore.ray_build import connected

        cluster = connected(cfg.ray, cfg.actors * (cfg.threads or 1) if cfg.actors else None)
    else:
        cluster = contextlib.nullcontext()
    with writing(cfg.out), exclusive(cfg.out, what="build"), exports, cluster:
        return _build_store(cfg)


def _build_store(cfg: BuildConfig) -> BuildResult:
    t0 = time.perf_counter()
    ckpts = discover(list(cfg.teachers)) if cfg.teachers else []
    task = cfg.task_def
    _check_tasks(ckpts, task, cfg.out)
    tok_dir = Path(cfg.tokenizer) if cfg.tokenizer is not None else _tokenizer_folder(ckpts)
    tok_files = _tokenizer_files(tok_dir)  # refuses links before any work is done
    from transformers import AutoTokenizer

    # faults (issue 10): the config first (a one-line error for one that needs custom code), and
    # never run or offer to run code from the folder (transformers would prompt y/N otherwise)
    model_cfg = read_config(ckpts[0].path) if ckpts else None
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=False)
    except Exception as exc:
        raise CheckpointError(f"cannot load a tokenizer from {tok_dir} ({type(exc).__name__}); "
                              "pass a folder with tokenizer files") from exc
    if cfg.labels:
        names: list[str] | None = list(cfg.labels)
    else:
        names = [model_cfg.id2label[i] for i in range(model_cfg.num_labels)] if model_cfg else None
    with console.status("reading and tokenizing the data"):
        raw = load_splits(cfg.data_config)
        label_names, label_map = task.resolve_labels(raw, cfg.label_column, names)
        input_names = _input_names(model_cfg, tokenizer)
        splits, hashes = {}, {}
        for name, ds in with_transfer(raw, cfg.transfer, cfg.data_config).items():  # + unlabelled texts (issue 14)
            splits[name], hashes[name] = tokenize_split(name, ds, tokenizer, cfg.data_config, label_map, input_names)
    for warning in filter(None, (truncation_warning(s, cfg.max_length) for s in splits.values())):
        console.print(f"[yellow]warning[/]: {warning}")
    meta = StoreMeta(
        task=cfg.task, label_names=label_names, text_columns=list(cfg.text_columns),
        label_column=cfg.label_column, max_length=cfg.max_length,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        dataset_fingerprint=dataset_fingerprint(hashes, cfg.data_config), input_names=list(input_names),
        validation_split=cfg.validation_split, created_by=f"logitstore {__version__}",
        pad_token_id=int(tokenizer.pad_token_id or 0),
        stride=cfg.stride if task.uses_stride else None, source_file=source_file(cfg.data),
        **(task.store_fields(cfg, model_cfg, tokenizer) | {"format_version": FORMAT_VERSION}),  # format 4: blocks
    )
    # Faults (issue 10): entries with unreadable metadata are dropped and written again, and a
    # full check of what would be skipped finds damaged splits and blocks to rewrite (repair.py).
    from logitstore.repair import drop_unreadable, find_damage

    drop_unreadable(cfg.out, meta, [c.name for c in ckpts])
    store = _open_or_create(cfg.out, meta, hashes)
    plan = find_damage(store, splits, [c.name for c in ckpts])
    for name, data in splits.items():
        if not store.has_split(name) or not store.split_meta(name).complete or name in plan.splits:
            store.write_split(data, hashes[name])
    store.write_tokenizer(tok_dir, tok_files)
    console.print(f"store [bold]{cfg.out}[/]: " + ", ".join(f"{n} {len(d):,} rows" for n, d in splits.items()))

    built, skipped = [], []
    for ck in ckpts:
        if _build_checkpoint(store, ck, cfg, splits, tokenizer, plan):
            built.append(ck.name)
        else:
            skipped.append(ck.name)
    return BuildResult(cfg.out, built, skipped, time.perf_counter() - t0)


def _check_tasks(ckpts: list[Checkpoint], task: Task, out: Path | str) -> None:
    """Refuse, before any data is read, a teacher whose config.architectures name another
    task than the store at ``out`` holds (or, for a new store, than the build's task), and
    a --task other than the existing store's."""
    import json

    held = None
    if storage.holds_store(out):
        try:
            held = get_task(LogitStore.open(out).meta.task)
        except (LogitStoreError, ValueError):
            held = None  # _open_or_create reports an unreadable store
    for ck in ckpts:
        try:
            arch = json.loads((ck.path / "config.json").read_text()).get("architectures") or []
        except (OSError, ValueError):
            continue  # loading the checkpoint reports it
        found = task_of_architecture(arch)
        if found is not None and not isinstance(held or task, type(found)):  # (a variant: causal-lm-sampled)
            where = f"store {out} holds {held.name}" if held else f"this build is {task.name} (--task)"
            raise StoreMismatchError(
                f"checkpoint {ck.name} is a {found.name} model ({arch[0]}) but {where}; build it into a store "
                f"of its own task (a new --out, --task {found.name})"
            )
    if held is not None and held is not task:
        raise StoreMismatchError(
            f"store {out} holds {held.name} but this build is {task.name}; pass --task {held.name} or build into "
            "a new --out"
        )


def _tokenizer_folder(ckpts: list[Checkpoint]) -> Path:
    for ck in ckpts:
        for folder in (ck.path, ck.path.parent):
            if any((folder / f).exists() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
                return folder
    raise CheckpointError(
        f"no tokenizer files next to {ckpts[0].path}; save the tokenizer into the checkpoint folder "
        "(tokenizer.save_pretrained(folder))"
    )


def _tokenizer_files(folder: Path) -> list[str]:
    """The known tokenizer files in ``folder`` (only those names are copied into a store).
    Raises CheckpointError for one that is a symbolic link: the store takes real files only,
    so no file the link points at (anything the user can read) ends up inside it."""
    links = [f for f in TOKENIZER_FILES if (folder / f).is_symlink()]
    if links:
        raise CheckpointError(f"tokenizer files {', '.join(links)} in {folder} are symbolic links; a store copies "
                              "real files only: replace them with copies (cp -L) or pass --tokenizer with real files")
    return [f for f in TOKENIZER_FILES if (folder / f).is_file()]


def _input_names(model_cfg: Any, tokenizer: Any) -> tuple[str, ...]:
    types = getattr(model_cfg, "type_vocab_size", 0) if model_cfg is not None \
        else "token_type_ids" in tokenizer.model_input_names
    return ("input_ids", "attention_mask") + (("token_type_ids",) if types else ())


def _open_or_create(path: Path | str, meta: StoreMeta, hashes: dict[str, str]) -> StoreWriter:
    if storage.is_empty(path):
        return StoreWriter.create(path, meta)
    if not storage.holds_store(path):
        raise StoreCorruptError(f"{path} exists and is not a logit store; choose another --out or remove it")
    store = StoreWriter.open(path)
    old = store.meta
    checks = [("task", old.task, meta.task), ("QA stride", old.stride, meta.stride),
              ("top-k", old.top_k, meta.top_k), ("temperatures", old.temperatures, meta.temperatures),
              ("log-prob step", old.logp_step, meta.logp_step), ("--sample", old.sample, meta.sample),
              ("--sample-temperature", old.sample_temperature, meta.sample_temperature),
              ("--sample-seed", old.sample_seed, meta.sample_seed),
              ("tokenizer", old.tokenizer_fingerprint, meta.tokenizer_fingerprint),
              ("label set", old.label_names, meta.label_names),
              ("text columns", old.text_columns, meta.text_columns),
              ("label column", old.label_column, meta.label_column),
              ("max length", old.max_length, meta.max_length),
              ("validation split", old.validation_split, meta.validation_split),
              ("splits", _held_splits(store, old, meta, hashes), sorted(hashes))]
    diffs = [f"{what} ({a} in the store, {b} now)" if what not in ("tokenizer",) else "tokenizer"
             for what, a, b in checks if a != b]
    for name, sha in hashes.items():
        if store.has_split(name) and store.split_meta(name).content_sha256 != sha:
            diffs.append(f"content of split {name!r}")
    if diffs:
        raise StoreMismatchError(
            f"store {path} was built from other data: {'; '.join(diffs)} differ; "
            "build into a new --out, or rebuild with the same data and tokenizer"
        )
    return store


def _held_splits(store: StoreWriter, old: StoreMeta, meta: StoreMeta, hashes: dict[str, str]) -> Any:
    """Faults (issue 10): the store's splits for the mismatch check. With the store's own data
    (same dataset fingerprint) a split missing from the store was deleted: the build writes it
    again. Otherwise a missing split is named as missing, not as "other data"."""
    held = sorted(store.split_names(complete_only=False))
    lost = sorted(set(hashes) - set(held))
    if old.dataset_fingerprint == meta.dataset_fingerprint:
        for name in lost:
            console.print(f"[yellow]repair[/]: split {name} is missing from store {store.path}: written again")
        return sorted(hashes)
    if lost:
        raise StoreMismatchError(
            f"split {', '.join(map(repr, lost))} is missing from store {store.path} and this data is not the data "
            "the store was built from (its dataset fingerprint differs); rerun with that data to write the split "
            "again, or build into a new --out")
    return held


def _build_checkpoint(store: StoreWriter, ck: Checkpoint, cfg: BuildConfig,
                      splits: dict[str, SplitData], tokenizer: Any, plan: Any = None) -> bool:
    """Build one checkpoint's entry; returns False when it was already complete (and
    undamaged: ``plan``, a verify.RepairPlan, lists the damaged parts to rewrite)."""
    wsha = weights_sha256(ck.path)
    if store.has_checkpoint(ck.name):
        old = store.checkpoint(ck.name)
        if old.weights_sha256 != wsha:
            raise StoreMismatchError(
                f"checkpoint {ck.name!r} in store {store.path} was built from other weights than {ck.path}; "
                "build into a new --out or rename the checkpoint folder"
            )
        if old.complete:
            if plan is not None and plan.touches(ck.name):  # faults (issue 10): rewrite only the damage
                from logitstore.repair import repair_checkpoint

                repair_checkpoint(store, ck, old, cfg, splits, plan)
                return True
            console.print(f"checkpoint [bold]{ck.name}[/]: complete, skipped")
            return False
    task = get_task(store.meta.task).for_store(store.meta)
    check_teacher(ck, store.meta, task, tokenizer)
    t0 = time.perf_counter()
    teacher = open_teacher(ck, task, cfg, splits[store.meta.validation_split], store.meta, wsha)
    session = teacher.session
    meta = CheckpointMeta(
        name=ck.name, source_path=str(ck.path), weights_sha256=wsha, num_labels=store.meta.num_labels,
        encoding=task.encoding or cfg.encoding, parity_max_abs_err=teacher.parity,
        parity_tolerance=cfg.parity_tolerance, provider=session.provider, onnx_path=teacher.onnx_path,
        metric=cfg.metric, step=ck.step, layout=store.meta.layout, runtime=teacher.runtime,
    )
    store.put_checkpoint(meta)
    fill_blocks(store, ck, teacher.onnx_path, session, cfg, splits)
    errs = [store.logits_meta(ck.name, s).max_abs_err for s in splits]
    meta = replace(scored(store, meta, splits), encode_max_abs_err=max(errs),  # every split's loss and metrics
                   build_seconds=round(time.perf_counter() - t0, 3), complete=True)
    store.put_checkpoint(meta)
    console.print(f"checkpoint [bold]{ck.name}[/]: validation loss {meta.val_loss:.4f}, "
                  f"{cfg.metric} {meta.val_score:.4f}")
    return True


def fill_blocks(store: StoreWriter, ck: Checkpoint, onnx_path: Path, session: Any, cfg: BuildConfig,
                splits: dict[str, SplitData]) -> None:
    """Write every split's entry of checkpoint ``ck`` block by block (logitstore/blocks.py):
    in this process with ``session``, or with --ray on Ray actors that each open ``onnx_path``."""
    from logitstore.blocks import BlockSpec, fill_split

    spec = BlockSpec(cfg.chunk_rows, cfg.token_budget, cfg.encoding)
    if cfg.ray is None:
        for data in splits.values():
            fill_split(store, ck.name, data, session, spec)
        return
    from logitstore.ray_build import ActorPool

    with ActorPool(store, ck, onnx_path, cfg, spec) as pool:
        for data in splits.values():
            pool.fill_split(data)
