"""Resumable training state: weights, optimizer state, settings and history in one
safetensors file, written atomically after every epoch and read back only by a run with the
same settings and spec (so a resumed run is bit-identical to an uninterrupted one), after every
tensor and metadata field has been checked."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.canonical import (
    CHECKSUM,
    check_finite,
    check_format,
    check_spec_matches,
    expected_tensors,
    metadata_for,
    read_header,
    read_tensors,
    write_safetensors,
)
from ..core.errors import RosettaError
from ..core.files import check_names_shapes
from .trainer import is_parameter

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


#: PyTorch creates an optimizer's state at its first step; its slots per parameter, by optimizer
TORCH_SLOTS: dict[str, tuple[str, ...]] = {"sgd": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq", "step"),
                                           "adamw": ("exp_avg", "exp_avg_sq", "step")}
#: the metadata every checkpoint has besides the canonical keys
CHECKPOINT_KEYS = ("epoch", "settings", "history", CHECKSUM)
_EPOCH_KEYS = ("epoch", "train_loss", "test_loss", "test_accuracy", "seconds", "images_per_second")


def save_checkpoint(path: Path, trainer: Trainer, settings: TrainSettings, epoch: int, history: History) -> None:
    """Weights, optimizer state, settings and history in one safetensors file, written
    atomically, with a checksum of every tensor byte."""
    tensors = {name: np.asarray(t, order="C") for name, t in trainer.export_weights().items()}
    tensors.update({f"optimizer/{k}": np.asarray(v, order="C") for k, v in trainer.optimizer_state().items()})
    meta = {**metadata_for(trainer.spec, settings.framework), "epoch": str(epoch),
            "settings": json.dumps(settings.identity(), sort_keys=True), "history": json.dumps(asdict(history))}
    write_safetensors(path, tensors, meta)


def expected_optimizer_state(trainer: Trainer) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every optimizer tensor a checkpoint of ``trainer`` must hold: the
    trainer's own state where it has one from the start (Keras, Optax), else PyTorch's slots
    for each parameter, in the canonical parameter order ``named_parameters`` follows."""
    state = trainer.optimizer_state()
    if state:
        return {k: tuple(np.shape(v)) for k, v in state.items()}
    params = [shape for name, shape in expected_tensors(trainer.spec).items() if is_parameter(name)]
    return {f"{i}.{slot}": (() if slot == "step" else shape)
            for i, shape in enumerate(params) for slot in TORCH_SLOTS[trainer.opt.name]}


def _history(path: Path, text: str, epoch: int, steps_per_epoch: int | None) -> History:
    def bad(what: str) -> RosettaError:
        return RosettaError(f"{path}: invalid checkpoint history: {what}")

    try:
        h = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise bad("not JSON") from None
    if not isinstance(h, dict) or not isinstance(h.get("step_loss"), list) or not isinstance(h.get("epochs"), list):
        raise bad("expected {\"step_loss\": [...], \"epochs\": [...]}")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in h["step_loss"]):
        raise bad("step_loss holds values that are not finite numbers")
    if len(h["epochs"]) != epoch:
        raise bad(f"{len(h['epochs'])} epoch record(s) for epoch {epoch}")
    for i, e in enumerate(h["epochs"], 1):
        if (not isinstance(e, dict) or set(e) != set(_EPOCH_KEYS) or e["epoch"] != i
                or not all(isinstance(e[k], (int, float)) and not isinstance(e[k], bool) for k in _EPOCH_KEYS)):
            raise bad(f"epoch record {i} is not {{{', '.join(_EPOCH_KEYS)}}} with numbers for epoch {i}")
    if steps_per_epoch is not None and len(h["step_loss"]) != epoch * steps_per_epoch:
        raise bad(f"{len(h['step_loss'])} step losses for {epoch} epoch(s) of {steps_per_epoch} steps")
    return History(h["step_loss"], h["epochs"])


def load_checkpoint(path: Path, trainer: Trainer, settings: TrainSettings,
                    steps_per_epoch: int | None = None) -> tuple[int, History]:
    """Restore a checkpoint written by the same settings; returns (epochs done, history).

    Everything is checked before the trainer is touched: the metadata (spec_hash, settings,
    epoch, history), every weight and optimizer tensor's name, shape and dtype, the data's
    checksum, and that every value is finite. Anything missing or inconsistent is an error
    naming it: a run never restarts silently from a broken checkpoint."""
    meta, infos, offset = read_header(path)
    check_format(path, meta)
    missing = [k for k in CHECKPOINT_KEYS if k not in meta]
    if missing:
        raise RosettaError(f"{path}: not a training checkpoint, or a damaged one: the metadata lacks "
                           f"{', '.join(missing)}")
    try:
        saved = json.loads(meta["settings"])
    except (json.JSONDecodeError, RecursionError):
        saved = None
    if not isinstance(saved, dict):
        raise RosettaError(f"{path}: invalid checkpoint settings (not a JSON object)")
    current = json.loads(json.dumps(settings.identity(), sort_keys=True))  # tuples -> lists, as saved
    if saved != current:
        diff = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
        raise RosettaError(f"{path} was written by a run with other settings ({', '.join(diff)} differ); "
                           "use another --out directory, or the same settings to resume")
    check_spec_matches(path, meta, trainer.spec)
    if not meta["epoch"].isdigit() or int(meta["epoch"]) < 1:
        raise RosettaError(f"{path}: invalid checkpoint epoch {meta['epoch']!r} (a checkpoint is written after "
                           "epoch 1, 2, ...)")
    epoch = int(meta["epoch"])
    history = _history(path, meta["history"], epoch, steps_per_epoch)
    weights = expected_tensors(trainer.spec)
    optimizer = {f"optimizer/{k}": v for k, v in expected_optimizer_state(trainer).items()}
    check_names_shapes({**weights, **optimizer}, {k: i.shape for k, i in infos.items()}, source=str(path),
                       target=f"a {settings.framework} {settings.optimizer['name']} checkpoint of {trainer.spec.name!r}")
    for name, info in infos.items():
        if name in weights and info.dtype != "F32":
            raise RosettaError(f"{path}: tensor {name!r} has dtype {info.dtype}, expected F32")
    tensors = read_tensors(path, infos, offset, meta, require_checksum=True)
    check_finite(tensors, source=str(path))
    trainer.import_weights({k: tensors[k] for k in weights})
    trainer.load_optimizer_state({k[len("optimizer/"):]: tensors[k] for k in optimizer})
    return epoch, history
