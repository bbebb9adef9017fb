"""The training loop behind ``rosetta train``: epochs over a dataset, progress, an atomic
checkpoint after every epoch (``training/resume.py``), the canonical weights, a JSON log and
the loss and accuracy curves. Framework-free: the step is the port's trainer
(``training/trainer.py``).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.canonical import save_canonical
from ..core.errors import FileError, RosettaError
from ..core.files import atomic_path
from ..tools import plots
from . import data as datasets
from . import distributed
from .resume import History, TrainSettings, load_checkpoint, save_checkpoint
from .trainer import DEFAULT_LR, OptimizerConfig, Trainer, build_trainer

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "model.safetensors"
LOG = "log.json"
CURVES = "curves.png"


def cross_entropy_np(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of numpy logits (float64, log-sum-exp stabilised)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def evaluate(trainer: Trainer, x: np.ndarray, y: np.ndarray, batch: int) -> tuple[float, float]:
    """(mean loss, accuracy) of the eval-mode model on ``x``."""
    logits = np.concatenate([trainer.predict(x[i:i + batch]) for i in range(0, len(x), batch)])
    return cross_entropy_np(logits, y), float((logits.argmax(axis=1) == y).mean())


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch: a function of (seed, epoch) only, so a resumed run
    sees the same batches."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def fit(trainer: Trainer, data: Any, settings: TrainSettings, out: Path,
        progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True), *,
        batches: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        metadata: dict[str, str | None] | None = None, engine: Any = None) -> History:
    """Train for ``settings.epochs`` (resuming from ``out``'s checkpoint if there is one),
    with a checkpoint, the weights, the JSON log and the curves written after every epoch.
    ``batches(idx, rng)`` makes a training batch (``images.augment.TrainBatches``; default:
    ``data.x_train[idx]``, with ``augment_batch`` under ``settings.augment``); ``metadata``
    adds optional canonical metadata (``preprocess``, ``classes``) to the weight file.

    ``engine`` (``training/distributed.py``): a data-parallel run. Every process makes the same
    global batches, trimmed to a multiple of the devices, and the trainer trains each device on
    its rows; only the primary process prints and writes; all of them resume from the checkpoint."""
    plan = engine.plan if engine is not None else None
    primary = plan is None or plan.primary
    if not primary:
        progress = _quiet
    if out.exists() and not out.is_dir():
        raise FileError(f"--out {out}: exists and is not a directory")
    try:
        if primary:
            out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileError(f"--out {out}: cannot create the directory: {e.strerror}") from None
    done, history = 0, History()
    n = len(data.x_train)
    steps = -(-n // settings.batch)
    if plan is not None and plan.steps(n) != steps:  # the last batch has fewer examples than devices
        progress(f"the last {n % settings.batch} example(s) of each epoch are left out: fewer than the "
                 f"{plan.devices} devices")
    if (out / CHECKPOINT).exists() or (out / CHECKPOINT).is_symlink():
        # a checkpoint of another device count may hold that many more step losses per epoch
        check = steps if plan is None or plan.steps(n) == steps else None
        done, history = load_checkpoint(out / CHECKPOINT, trainer, settings, steps_per_epoch=check)
        progress(f"resuming from {out / CHECKPOINT} after epoch {done}")
    if plan is not None:
        steps = plan.steps(n)
        if plan.processes > 1:
            seen = engine.gather(done)
            if len(set(seen)) > 1:
                raise RosettaError(f"the processes found different checkpoints in --out {out} (epochs done per "
                                   f"process: {seen}); every process reads the primary's files: put --out on a "
                                   "file system they share")
    parallel = None if plan is None else plan.record(engine=engine.name)
    for epoch in range(done + 1, settings.epochs + 1):
        order = epoch_order(n, settings.seed, epoch)
        trainer.reseed(settings.seed * 100_003 + epoch)
        rng = np.random.default_rng([settings.seed, epoch, 1])
        t0, seen, losses = time.perf_counter(), 0, []
        for i in range(steps):
            idx = order[i * settings.batch:(i + 1) * settings.batch]
            if plan is not None:
                idx = plan.trim(idx)
            if batches is not None:
                x = batches(idx, rng)
            else:
                x = data.x_train[idx]
                if settings.augment:
                    x = datasets.augment_batch(x, rng)
            losses.append(trainer.step(x, data.y_train[idx]))
            if parallel is not None and i == 0:  # what the engine fed device 0, as observed
                parallel["per_device_rows_seen"] = (getattr(trainer, "replica_shape", None) or [None])[0]
            if not math.isfinite(losses[-1]):
                raise RosettaError(f"the loss became {losses[-1]} at epoch {epoch}, step {i + 1}: training "
                                   "diverged from finite weights and data; try a lower --lr")
            seen += len(idx)
            if (i + 1) % max(steps // 5, 1) == 0 or i + 1 == steps:
                rate = seen / (time.perf_counter() - t0)
                progress(f"epoch {epoch}/{settings.epochs} step {i + 1}/{steps} loss {np.mean(losses[-10:]):.4f} "
                         f"{rate:.0f} images/s")
        seconds = time.perf_counter() - t0
        test_loss, test_acc = evaluate(trainer, data.x_test, data.y_test, settings.batch)
        history.step_loss += losses
        history.epochs.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "test_loss": test_loss,
                               "test_accuracy": test_acc, "seconds": seconds, "images_per_second": n / seconds})
        progress(f"epoch {epoch}/{settings.epochs}: train loss {np.mean(losses):.4f}, test loss {test_loss:.4f}, "
                 f"test accuracy {100 * test_acc:.2f}% ({n / seconds:.0f} images/s)")
        if primary:
            _write_epoch(trainer, settings, epoch, history, out, metadata,
                         parallel or distributed.single_device_record(settings.batch))
    return history


def _quiet(message: str) -> None:
    """The progress of a data-parallel run's other processes: the primary prints it."""


def _write_epoch(trainer: Trainer, settings: TrainSettings, epoch: int, history: History, out: Path,
                 metadata: dict[str, str | None] | None = None, parallel: dict[str, Any] | None = None) -> None:
    save_checkpoint(out / CHECKPOINT, trainer, settings, epoch, history)
    save_canonical(out / WEIGHTS, trainer.spec, trainer.export_weights(), framework=settings.framework,
                   **(metadata or {}))
    log = {"settings": asdict(settings), "spec_overrides": dict(trainer.spec.overrides), "epochs_done": epoch,
           **asdict(history), **({"parallel": parallel} if parallel else {})}
    with atomic_path(out / LOG) as tmp:
        tmp.write_text(json.dumps(log, indent=1))
    plots.write_optional(plots.plot_curves, history, out / CURVES,
                         f"{settings.model} on {settings.data} ({settings.framework}, {settings.optimizer['name']})")


def train(model: str, framework: str, data: str, out: str | Path, *, epochs: int = 10, batch: int = 64,
          optimizer: str = "sgd", lr: float | None = None, weight_decay: float = 5e-4, augment: bool = False,
          seed: int = 0, overrides: dict[str, Any] | None = None,
          progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
          preprocess: str | None = None, pca_std: float = 0.0,
          scale_jitter: tuple[int, int] | None = None, parallel: distributed.Plan | None = None) -> tuple[Any, History]:
    """Train ``model`` in ``framework`` on ``data`` (``digits``, an IDX directory or a folder of
    class folders), writing into ``out``; returns (spec, history). Defaults fill in what the
    data decides: digits and IDX files one input channel and the smallest input size the model
    accepts, image folders three channels and the spec's input size; the data's class count.
    Image folders are preprocessed with ``preprocess`` (default ``torchvision``); ``pca_std``
    and ``scale_jitter`` add AlexNet's PCA colour noise and VGG's scale jittering
    (``images/augment.py``). ``parallel`` trains on several devices with the framework's own
    engine (``training/distributed.py``; ``rosetta train --devices N``)."""
    from ..core.spec import load_spec
    from ..images import augment as recipes
    from ..images import folders
    from ..images.preprocess import named

    if epochs < 1 or batch < 1:
        raise RosettaError(f"--epochs and --batch must be at least 1 (got {epochs}, {batch})")
    engine = distributed.start(parallel) if parallel is not None else None
    if engine is not None and not engine.plan.primary:
        progress = _quiet
    recipe = recipes.Recipe(augment, pca_std, tuple(scale_jitter) if scale_jitter else None)
    overrides = dict(overrides or {})
    metadata: dict[str, str | None] = {}
    if data != "digits" and Path(data).is_dir() and not datasets.is_idx_dir(data):
        overrides.setdefault("in_channels", 3)
        train_split, test_split = folders.splits(data)
        overrides.setdefault("num_classes", len(train_split.classes))
        spec = load_spec(model, overrides)
        prep = named(preprocess or "torchvision", spec.input_shape)
        dataset: Any = folders.FolderDataset(Path(data).name, train_split, test_split, prep)
        datasets.check_num_classes(dataset, overrides["num_classes"])
        metadata["classes"] = json.dumps(dataset.classes)
        recipe_settings = {**recipe.settings(), "preprocess": prep.name}
    else:
        if preprocess is not None:
            raise RosettaError("--preprocess applies to image folders; digits and IDX data are standardised with "
                               "the training set's mean and std (the 'train' preprocessing)")
        overrides.setdefault("in_channels", 1)  # digits, MNIST and Fashion-MNIST are grayscale
        if "input_size" not in overrides:
            overrides["input_size"] = datasets.min_input_size(model, overrides)
        probe = load_spec(model, overrides)
        dataset = datasets.load(data, probe.input_shape)
        overrides.setdefault("num_classes", dataset.num_classes)
        datasets.check_num_classes(dataset, overrides["num_classes"])
        spec = load_spec(model, overrides)
        prep = named("train", spec.input_shape, mean=[dataset.mean], std=[dataset.std])
        recipe_settings = recipe.settings()
    metadata["preprocess"] = prep.to_json()
    opt = OptimizerConfig(optimizer, lr=lr if lr is not None else DEFAULT_LR[optimizer], weight_decay=weight_decay)
    settings = TrainSettings(model, framework, data, epochs, batch, asdict(opt), augment, overrides, seed,
                             recipe_settings)
    progress(f"{spec.name} ({'x'.join(map(str, spec.input_shape))}, {dataset.num_classes} classes) on "
             f"{dataset.name}: {len(dataset.x_train)} train / {len(dataset.x_test)} test images, {framework}, "
             f"{opt.name} lr {opt.lr}")
    batches = recipes.TrainBatches(dataset, recipe, progress) if recipe_settings else None
    if engine is None:
        trainer = build_trainer(framework, spec, opt, seed=seed)
        return spec, fit(trainer, dataset, settings, Path(out), progress, batches=batches, metadata=metadata)
    plan = engine.plan
    progress(f"data parallel: {engine.name}; global batch {batch} = {plan.devices} devices x "
             f"{plan.per_device_batch}; BatchNorm statistics {plan.batchnorm}")
    trainer = engine.build_trainer(spec, opt, seed=seed)
    history = fit(trainer, dataset, settings, Path(out), progress, batches=batches, metadata=metadata, engine=engine)
    engine.close()
    return spec, history
