"""Find teacher checkpoints on disk and fingerprint their weights.

``--teacher PATH`` is either one Hugging Face checkpoint folder (config.json plus
safetensors weights) or a training output folder whose ``checkpoint-*`` subfolders are
checkpoints. Weights are read only from safetensors (no pickle is ever loaded).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logitstore.errors import CheckpointError
from logitstore.util import update_from_file

_STEP = re.compile(r"checkpoint-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    """One teacher checkpoint: its store entry ``name``, folder and training step (if known)."""

    name: str
    path: Path
    step: int | None


def is_checkpoint(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def discover(paths: list[Path]) -> list[Checkpoint]:
    """Expand ``--teacher`` paths into checkpoints with unique names, in the order given.

    A folder with ``checkpoint-*`` subfolders stands for those checkpoints (a final model
    saved beside them is not one of them). A folder named ``checkpoint-N`` keeps that name; a collision between runs is resolved
    by prefixing the run folder's name. Raises CheckpointError for a path that is neither.
    """
    found: list[tuple[Path, int | None]] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise CheckpointError(f"teacher path {p} does not exist; pass a checkpoint folder or a training output folder")
        subs = sorted((s for s in p.glob("checkpoint-*") if s.is_dir()), key=lambda s: (_step(s) or 0, s.name))
        good = [s for s in subs if is_checkpoint(s)]
        if good:  # a training output folder: its checkpoints, not the final model beside them
            found.extend((s, _step(s)) for s in good)
            continue
        if is_checkpoint(p):
            found.append((p, _step(p)))
            continue
        pickled = " (only pytorch_model.bin: re-save it with save_pretrained(safe_serialization=True))" \
            if any(p.glob("**/pytorch_model.bin")) else ""
        raise CheckpointError(
            f"{p} is not a checkpoint: it needs config.json and *.safetensors weights, or checkpoint-* "
            f"subfolders that have them{pickled}; pass a folder saved by save_pretrained or Trainer"
        )
    names = [f.name for f, _ in found]
    out: list[Checkpoint] = []
    for (folder, step), name in zip(found, names):
        if names.count(name) > 1:
            name = f"{folder.parent.name}-{name}"
        out.append(Checkpoint(name, folder.resolve(), step))
    dupes = sorted({c.name for c in out if [d.name for d in out].count(c.name) > 1})
    if dupes:
        raise CheckpointError(f"teacher checkpoints share the names {', '.join(dupes)}; pass each folder once")
    return out


def _step(folder: Path) -> int | None:
    return step_of(folder.name)


def step_of(name: str) -> int | None:
    """The training step of a checkpoint named ``checkpoint-N`` (or ``<run>-checkpoint-N``), else None."""
    m = _STEP.search(name)
    return int(m.group(1)) if m else None


def weights_sha256(folder: Path) -> str:
    """sha256 over the checkpoint's safetensors files (sorted by name) and config.json."""
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
        h.update(f.name.encode())
        update_from_file(h, f)
    return h.hexdigest()


def read_config(folder: Path) -> Any:
    """The checkpoint's transformers config, read without running any code from the folder.

    Faults (issue 10): a config that needs custom code (``auto_map`` with a model_type
    transformers does not know) or cannot be parsed is a one-line CheckpointError, not a
    traceback from deep inside transformers."""
    import json

    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers raises ValueError, KeyError, OSError...
        try:
            raw = json.loads((Path(folder) / "config.json").read_text())
        except (OSError, ValueError):
            raw = None
        if not isinstance(raw, dict):
            raise CheckpointError(f"{folder}/config.json is not a JSON object; pass a folder saved by "
                                  "save_pretrained") from exc
        if raw.get("auto_map"):
            raise CheckpointError(
                f"{folder} needs its own code (config.json has auto_map, model_type {raw.get('model_type')!r}), and "
                "logitstore never runs code from a checkpoint (trust_remote_code stays off); use a checkpoint of a "
                "transformers architecture") from exc
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"cannot read the config of {folder} ({type(exc).__name__}: {first}); pass a folder "
                              "saved by save_pretrained with a transformers model_type") from exc
