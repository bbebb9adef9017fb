"""Resumable training state: weights, optimizer state, settings and history in one
safetensors file, written atomically after every epoch and read back only by a run with the
same settings (so a resumed run is bit-identical to an uninterrupted one)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.canonical import metadata_for, read_metadata
from ..core.errors import RosettaError
from ..core.files import atomic_path

if TYPE_CHECKING:
    from .trainer import Trainer


@dataclass
class TrainSettings:
    """Everything that determines a run; a resumed run must have the same settings."""

    model: str
    framework: str
    data: str
    epochs: int
    batch: int
    optimizer: dict[str, Any]
    augment: bool
    overrides: dict[str, Any]
    seed: int = 0
    #: data recipes beyond ``augment`` (images/augment.py) and an image folder's preprocessing
    recipe: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """The settings a checkpoint must share to be resumed (all but the epoch count; an
        empty ``recipe`` is left out, so checkpoints written before recipes existed resume)."""
        d = asdict(self)
        del d["epochs"]
        if not d["recipe"]:
            del d["recipe"]
        return d


@dataclass
class History:
    """Per-step training losses and per-epoch metrics (also the JSON log's content)."""

    step_loss: list[float] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)


def save_checkpoint(path: Path, trainer: Trainer, settings: TrainSettings, epoch: int, history: History) -> None:
    """Weights, optimizer state, settings and history in one safetensors file, written atomically."""
    from safetensors.numpy import save_file

    tensors = {name: np.ascontiguousarray(t) for name, t in trainer.export_weights().items()}
    tensors.update({f"optimizer/{k}": np.ascontiguousarray(v) for k, v in trainer.optimizer_state().items()})
    meta = {**metadata_for(trainer.spec, settings.framework), "epoch": str(epoch),
            "settings": json.dumps(settings.identity(), sort_keys=True), "history": json.dumps(asdict(history))}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_checkpoint(path: Path, trainer: Trainer, settings: TrainSettings) -> tuple[int, History]:
    """Restore a checkpoint written by the same settings; returns (epochs done, history)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    meta = read_metadata(path)
    saved = json.loads(meta.get("settings", "{}"))
    current = json.loads(json.dumps(settings.identity(), sort_keys=True))  # tuples -> lists, as saved
    if saved != current:
        diff = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
        raise RosettaError(f"{path} was written by a run with other settings ({', '.join(diff)} differ); "
                           "use another --out directory, or the same settings to resume")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise RosettaError(f"{path}: corrupted checkpoint ({e})") from None
    trainer.import_weights({k: v for k, v in tensors.items() if not k.startswith("optimizer/")})
    trainer.load_optimizer_state({k[len("optimizer/"):]: v for k, v in tensors.items() if k.startswith("optimizer/")})
    h = json.loads(meta["history"])
    return int(meta["epoch"]), History(h["step_loss"], h["epochs"])
