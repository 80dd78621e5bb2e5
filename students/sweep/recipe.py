"""The sweep as a whole, the recipe behind `students sweep`:

    SweepConfig -> check SWEEP_DIR (its sweep.json, the store it recorded) -> sweep.json
    "running" -> per student size: strategy(space, layers, Runner.run_points) -> sweep.json
    "complete" with the outcomes -> prune the student models nobody asked to keep

Disk: every run saves its student while it trains (the best run is known only at the end);
when the sweep completes, ``save_models="best"`` deletes the model files of every run but the
best-seed run of each size's winner and of each baseline, ``"none"`` those of every run,
``"all"`` none. Metrics (summary.json, metrics.jsonl, run_config.json) stay for every run.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from logitstore.lock import exclusive
from students.config import TrainConfig, output_dir
from students.errors import ConfigError
from students.sweep.points import NOT_IN_KEY, Point, train_run
from students.sweep.progress import SweepProgress
from students.sweep.results import RECORD_VERSION, check_same_store, prune_models, read_manifest, write_manifest
from students.sweep.executors import Executor, RunFn, make_executor
from students.sweep.runner import Runner
from students.sweep.space import PARAMS, SweepSpace
from students.sweep.strategies import GREEDY_ORDER, STRATEGIES, LayersOutcome, greedy, grid, grid_runs

SAVE_MODELS = ("best", "all", "none")  # which runs keep their student model once the sweep is complete


@dataclass(frozen=True)
class SweepConfig:
    """One sweep: store, folder, strategy, space, where the runs train, the training options
    every run shares (``train``: a TrainConfig whose KD fields, seed, store and out are
    replaced per run; None = TrainConfig defaults) and which student models to keep
    (``save_models``: SAVE_MODELS; neither it nor the threads enter run keys).

    Where the runs train (students/sweep/executors.py): ``workers`` = None or 1 in this process,
    N > 1 in a local pool of N processes; ``ray`` = "local" (a Ray cluster on this machine), "auto"
    or a cluster address: one Ray task per run with ``train.threads`` CPUs (default 1) and
    ``gpus_per_run`` GPUs. ``ray`` and ``workers`` > 1 exclude each other."""

    store: str
    out: str
    strategy: str = "greedy"
    space: SweepSpace = field(default_factory=SweepSpace)
    workers: int | None = None  # None: 1 (or Ray's choice with ray)
    train: TrainConfig | None = None
    save_models: str = "best"
    ray: str | None = None
    gpus_per_run: float = 0.0

    def __post_init__(self) -> None:
        p = []
        if self.save_models not in SAVE_MODELS:
            p.append(f"save_models must be one of {', '.join(SAVE_MODELS)}. Got {self.save_models!r} instead")
        if self.strategy not in STRATEGIES:
            p.append(f"strategy must be one of {', '.join(STRATEGIES)}. Got {self.strategy!r} instead")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            p.append(f"workers must be an integer >= 1. Got {self.workers!r} instead")
        if self.ray is not None and self.workers is not None:
            p.append(f"--workers {self.workers} sets the local process pool; with --ray the cluster's free CPUs "
                     "decide how many runs train at once: drop --workers (or drop --ray)")
        if self.ray == "":
            p.append("ray must be None, 'local', 'auto' or a cluster address. Got '' instead")
        if not isinstance(self.gpus_per_run, (int, float)) or self.gpus_per_run < 0:
            p.append(f"gpus_per_run must be a number >= 0. Got {self.gpus_per_run!r} instead")
        elif self.gpus_per_run and self.ray is None:
            p.append("--gpus-per-run asks Ray for GPUs per run: it needs --ray")
        if p:
            raise ConfigError("invalid sweep config: " + "; ".join(p), p)

    @property
    def template(self) -> TrainConfig:
        base = self.train or TrainConfig(store=self.store, out=self.out)
        return replace(base, store=str(self.store), out=str(self.out), progress=False)


@dataclass
class SweepResult:
    """What a sweep did: the outcome per student size and how many runs it trained now."""

    out: Path
    outcomes: list[LayersOutcome]
    ran: int
    records: dict[str, dict[str, Any]]


def _store_identity(store_path: str, space: SweepSpace) -> dict[str, Any]:
    """Open the store once (metadata only) and check every teacher value resolves."""
    from logitstore.store import open_store

    store = open_store(store_path)
    chosen = {t: store.select(t).name for t in dict.fromkeys(("ths", "tll") + space.teacher)}
    return {"dataset_fingerprint": store.meta.dataset_fingerprint,
            "tokenizer_fingerprint": store.meta.tokenizer_fingerprint, "teachers": chosen}


def _manifest(config: SweepConfig, identity: dict[str, Any] | None) -> dict[str, Any]:
    """The sweep.json of a sweep that starts: its plan, status "running", no outcomes yet."""
    options = {k: v for k, v in config.template.to_dict().items() if k not in NOT_IN_KEY + PARAMS + ("seed",)}
    return {"version": RECORD_VERSION, "store": str(config.store), "store_identity": identity,
            "strategy": config.strategy, "space": config.space.to_dict(), "greedy_order": list(GREEDY_ORDER),
            "train_options": options, "save_models": config.save_models, "status": "running", "outcomes": []}


def run_sweep(config: SweepConfig, run_fn: RunFn = train_run, console: Console | None = None,
              check_store: bool = True, executor: Executor | None = None) -> SweepResult:
    """Run (or resume) a sweep; writes SWEEP_DIR/results.jsonl as runs finish and
    SWEEP_DIR/sweep.json (the plan, then the outcome). ``run_fn`` trains one config;
    ``check_store`` = False skips opening the store (for fake run functions). ``executor``:
    where the runs train, owned by the caller (a study's cases share one); None: the
    sweep makes its own from ``config`` and closes it.

    Raises OutputPathError (SWEEP_DIR cannot be a folder), StoreLockedError (another sweep
    is writing SWEEP_DIR: a lock beside it, logitstore/lock.py), ResultsFileError (a damaged
    sweep.json or results.jsonl, a folder of another store), logitstore errors for the store."""
    console = console or Console()
    out = output_dir(config.out)
    with exclusive(out, what="sweep", thing="sweep folder"):  # two sweeps on one folder would train every run twice
        return _run_locked(config, out, run_fn, console, check_store, executor)


def _run_locked(config: SweepConfig, out: Path, run_fn: RunFn, console: Console, check_store: bool,
                shared: Executor | None) -> SweepResult:
    old = read_manifest(out)  # the folder's own files first: a damaged one fails before the store is read
    identity = _store_identity(config.store, config.space) if check_store else None
    if identity is not None:
        check_same_store(out, old, identity)
    manifest = _manifest(config, identity)
    write_manifest(out, manifest)
    progress = SweepProgress(console, grid_runs(config.space) if config.strategy == "grid" else None)
    executor = shared or make_executor(run_fn, config.template.threads, config.workers or 1, config.ray,
                                       config.gpus_per_run)
    strategy = greedy if config.strategy == "greedy" else grid
    try:
        runner = Runner(out, config.template, config.space.seeds, executor, console,
                        identity["teachers"] if identity is not None else None, progress)
        with progress:
            outcomes = [strategy(config.space, k, runner.run_points) for k in config.space.layers]
    finally:
        if shared is None:
            executor.close()
    kept = _models_to_keep(outcomes, runner, config.save_models)
    manifest.update(status="complete", outcomes=[o.to_dict() for o in outcomes], models_kept=kept,
                    failed=dict(sorted(runner.failed.items())))
    write_manifest(out, manifest)
    if runner.failed:
        console.print(f"[red]{len(runner.failed)} run(s) failed[/] (their worker died twice; sweep.json `failed` "
                      f"says why); they rank below every finished run. Rerun the same command to retry them.",
                      soft_wrap=True)
    if config.save_models != "all":
        pruned = prune_models(out, runner.asked - set(kept))
        console.print(f"kept the student models of {len(kept)} run(s) (sweep.json `models_kept`), deleted those "
                      f"of {pruned} other run(s), kept every run's metrics (--save-models all keeps every model)",
                      soft_wrap=True)
    for o in outcomes:
        console.print(f"L{o.layers} {config.strategy} winner: {o.winner.label()} "
                      f"(val {runner.stats(o.winner).val_mean:.4f}); `students report {out}` for the tables")
    return SweepResult(out, outcomes, runner.ran, runner.records)


def _models_to_keep(outcomes: list[LayersOutcome], runner: Runner, save_models: str) -> dict[str, str]:
    """Run key -> what it is, for the runs whose student model stays: per size, the best seed
    (by validation; ties: the first seed) of the winner and of each baseline (``"best"``),
    every run (``"all"``) or none. A copy (same_run_as) keeps the run it copies."""
    if save_models == "all":
        return {k: Point.from_dict(runner.records[k]["point"]).label() for k in sorted(runner.asked)
                if k in runner.records}
    kept: dict[str, str] = {}
    for o in outcomes if save_models == "best" else []:
        for role, p in (("winner", o.winner), ("hinton", o.hinton), ("recommended", o.recommended),
                        ("no_kd", o.no_kd)):
            keys = [k for k in (runner.key(p, s) for s in runner.seeds) if k in runner.records]
            if not keys:  # every run of it failed
                continue
            best = max(keys, key=lambda k: runner.records[k]["val"])  # max keeps the first of equals
            best = runner.records[best].get("same_run_as", best)
            kept[best] = f"{kept[best]}, {role}" if best in kept else f"L{o.layers} {role}: {p.label()}"
    return kept
