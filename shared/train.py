"""Training, framework-free: optimizer settings, loss weighting, the loop, checkpoints, logs.

Each framework package has ``train.py`` with ``make_trainer(model, spec, opt) -> Trainer``
(the :class:`Trainer` protocol below): one idiomatic training step per framework
(``loss.backward()`` + ``torch.optim``; a Keras 3 custom step under ``tf.GradientTape`` with
``keras.optimizers``; ``nnx.value_and_grad`` + ``nnx.Optimizer`` with Optax). Everything
that does not depend on the framework lives here, so the three stay parallel:

* :class:`OptimizerConfig`: SGD with momentum 0.9 and weight decay 5e-4 (AlexNet paper
  https://papers.nips.cc/paper/4824 section 5, VGG paper https://arxiv.org/abs/1409.1556
  section 3.1), Adam and AdamW, with PyTorch's semantics as the definition every framework
  maps to (the mappings are documented in each ``train.py``);
* :func:`loss_weights`: mean cross-entropy of the logits plus 0.3 x each auxiliary head's
  (GoogLeNet paper https://arxiv.org/abs/1409.4842 section 5);
* :func:`fit` and ``rosetta train``: epochs over a :class:`shared.datasets.Dataset`, progress
  on stderr, an atomic checkpoint after every epoch, resume, PNG curves and a JSON log.

Nothing here imports a framework at import time.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from .errors import RosettaError

#: weight of each auxiliary classifier's loss in the total (GoogLeNet paper, section 5)
AUX_LOSS_WEIGHT = 0.3

OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class OptimizerConfig:
    """One optimizer, in PyTorch's terms (the reference semantics of this project).

    ``sgd``: ``torch.optim.SGD`` with ``momentum`` and coupled L2 ``weight_decay`` (added to
    the gradient before the momentum buffer, as the AlexNet paper's update rule does);
    ``adam``: ``torch.optim.Adam`` (coupled L2 too, epsilon added to the bias-corrected
    ``sqrt(v_hat)``); ``adamw``: ``torch.optim.AdamW`` (decoupled decay
    ``p -= lr * weight_decay * p`` before the Adam update). Weight decay applies to every
    trainable parameter (biases and BatchNorm's too), as with ``model.parameters()``.
    """

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise RosettaError(f"unknown optimizer {self.name!r}; choose from {', '.join(OPTIMIZERS)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RosettaError(f"learning rate must be a positive number, got {self.lr!r}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0 or self.eps <= 0:
            raise RosettaError(f"invalid optimizer settings: momentum {self.momentum} (needs [0, 1)), "
                               f"weight_decay {self.weight_decay} (needs >= 0), eps {self.eps} (needs > 0)")
        if not all(0 <= b < 1 for b in self.betas):
            raise RosettaError(f"Adam betas must lie in [0, 1), got {self.betas}")

    @property
    def coupled_l2(self) -> float:
        """The L2 coefficient added to the gradients (sgd, adam); 0 for decoupled AdamW."""
        return 0.0 if self.name == "adamw" else self.weight_decay

    @property
    def decoupled_decay(self) -> float:
        """The decoupled decay rate (AdamW); 0 for sgd and adam."""
        return self.weight_decay if self.name == "adamw" else 0.0


def loss_weights(spec: Any) -> dict[str, float]:
    """Output key -> weight of its mean cross-entropy in the training loss."""
    return {"logits": 1.0, **{key: AUX_LOSS_WEIGHT for key in spec.aux_outputs}}


def is_parameter(name: str) -> bool:
    """Whether a canonical tensor is trained (not a BatchNorm running statistic)."""
    return not name.endswith((".running_mean", ".running_var"))


class Trainer(Protocol):
    """What every ``<fw>_impl.train.make_trainer`` returns. Arrays are canonical (NCHW)."""

    model: Any
    spec: Any
    opt: OptimizerConfig

    def step(self, x_nchw: np.ndarray, y: np.ndarray) -> float:
        """One forward (training mode) + backward + update; returns the loss before the update."""

    def gradients(self, x_nchw: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """d loss / d parameter by canonical name, without updating the parameters (the
        training-mode forward still moves the BatchNorm running statistics)."""

    def predict(self, x_nchw: np.ndarray) -> np.ndarray:
        """Eval-mode logits."""

    def export_weights(self) -> dict[str, np.ndarray]:
        """The model's canonical tensors."""

    def import_weights(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Load canonical tensors into the model."""

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimizer's state (framework-native order and names) as numpy arrays."""

    def load_optimizer_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what ``optimizer_state`` returned (same framework and optimizer)."""

    def reseed(self, seed: int) -> None:
        """Reset the dropout random streams, so an epoch's randomness depends on its seed only."""


class PackageTrainer:
    """The framework-independent methods of every trainer, through the package contract
    (``shared.frameworks``): subclasses set ``framework`` and have ``model`` and ``spec``."""

    framework: str
    model: Any
    spec: Any

    def predict(self, x_nchw: np.ndarray) -> np.ndarray:
        """Eval-mode logits."""
        from .frameworks import load

        return load(self.framework).forward(self.model, x_nchw, train=False)["logits"]

    def export_weights(self) -> dict[str, np.ndarray]:
        """The model's canonical tensors."""
        from .frameworks import load

        return load(self.framework).export_weights(self.model, self.spec)

    def import_weights(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Load canonical tensors into the model (nothing changes if they do not fit)."""
        from .frameworks import load

        load(self.framework).import_weights(self.model, self.spec, tensors)


# ---------------------------------------------------------------------------
# training parity: the same start, the same batches, every framework


@dataclass
class TrainingRun:
    """What one framework did from the canonical start (all canonical numpy arrays)."""

    framework: str
    start: dict[str, np.ndarray]
    gradients: dict[str, np.ndarray]
    weights: dict[int, dict[str, np.ndarray]]  # after k steps -> every canonical tensor
    losses: list[float]


def build_trainer(framework: str, spec: Any, opt: OptimizerConfig, tensors: Mapping[str, np.ndarray] | None = None,
                 *, seed: int = 0) -> Trainer:
    """Build ``spec`` in ``framework``, load ``tensors`` (canonical) if given, wrap it in a trainer."""
    import importlib

    from . import frameworks

    package = frameworks.load(framework)
    model = package.build_model(spec, seed=seed)
    if tensors is not None:
        package.import_weights(model, spec, tensors)
    return importlib.import_module(f"{package.__name__}.train").make_trainer(model, spec, opt)


def training_run(framework: str, spec: Any, start: Mapping[str, np.ndarray], batches: list[tuple[np.ndarray, np.ndarray]],
                 opt: OptimizerConfig, *, keep: tuple[int, ...] = (1, 5)) -> TrainingRun:
    """Gradients on the first batch, then one step per batch from ``start`` again; the weights
    after each step count in ``keep``."""
    trainer = build_trainer(framework, spec, opt, start)
    grads = trainer.gradients(*batches[0])
    trainer.import_weights(start)  # the gradient pass moved the BatchNorm running statistics
    weights, losses = {}, []
    for k, (x, y) in enumerate(batches, 1):
        losses.append(trainer.step(x, y))
        if k in keep:
            weights[k] = trainer.export_weights()
    return TrainingRun(framework, dict(start), grads, weights, losses)


#: changes of a weight smaller than this fraction of its layer's largest weight are at the
#: limit of what fp32 weights resolve (1e-5 = ~80 ulp): a 1% check of them would test rounding
FP32_RESOLUTION = 1e-5


def _by_layer_scale(tensors: Mapping[str, np.ndarray]) -> dict[str, float]:
    scale: dict[str, float] = {}
    for name, t in tensors.items():
        layer = name.rsplit(".", 1)[0]
        scale[layer] = max(scale.get(layer, 0.0), float(np.abs(t).max()))
    return scale


def layer_relative_diff(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
                        floor: Mapping[str, float] | None = None) -> tuple[float, str]:
    """(worst max|ref - got| / scale, its tensor name) where a tensor's scale is the largest
    |value| among its layer's tensors in ``ref`` (at least ``floor[layer]``): a conv bias right
    before a BatchNorm has a true gradient of exactly 0, so only fp32 noise, and is judged
    against its layer's weight."""
    scale = _by_layer_scale(ref)
    worst = (0.0, "")
    for name, r in ref.items():
        if name not in got or np.shape(got[name]) != np.shape(r):
            return math.inf, name
        layer = name.rsplit(".", 1)[0]
        s = max(scale[layer], (floor or {}).get(layer, 0.0))
        d = float(np.abs(np.asarray(r, np.float64) - got[name]).max()) / (s or 1.0)
        if not d <= worst[0]:
            worst = (d, name)
    return worst


def compare_runs(ref: TrainingRun, got: TrainingRun) -> dict[str, tuple[float, str]]:
    """Each training-parity check -> (worst relative difference, where):
    ``gradients``; ``weights@k`` (each parameter's change from the start after k steps,
    against its layer's largest change, or ``FP32_RESOLUTION`` of its layer's weights if that
    is larger); ``bn_stats@k`` (BatchNorm running statistics after k steps, each against its
    own scale); ``loss`` (the losses of every step, relative to their scale)."""
    out = {"gradients": layer_relative_diff(ref.gradients, got.gradients)}
    for k, w in ref.weights.items():
        params = [n for n in w if is_parameter(n)]
        floor = {layer: FP32_RESOLUTION * s for layer, s in _by_layer_scale({n: w[n] for n in params}).items()}
        out[f"weights@{k}"] = layer_relative_diff({n: w[n] - ref.start[n] for n in params},
                                                  {n: got.weights[k][n] - got.start[n] for n in params}, floor)
        stats = [n for n in w if not is_parameter(n)]
        if stats:
            out[f"bn_stats@{k}"] = max((float(np.abs(w[n] - got.weights[k][n]).max() / np.abs(w[n]).max()), n)
                                       for n in stats)
    r, g = np.asarray(ref.losses), np.asarray(got.losses)
    out["loss"] = (float(np.abs(r - g).max() / np.abs(r).max()), f"{len(r)} steps")
    return out


# ---------------------------------------------------------------------------
# the training loop: rosetta train

DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3, "adamw": 1e-3}
CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "model.safetensors"
LOG = "log.json"
CURVES = "curves.png"


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

    def identity(self) -> dict[str, Any]:
        """The settings a checkpoint must share to be resumed (all but the epoch count)."""
        d = asdict(self)
        del d["epochs"]
        return d


@dataclass
class History:
    """Per-step training losses and per-epoch metrics (also the JSON log's content)."""

    step_loss: list[float] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)


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


def save_checkpoint(path: Path, trainer: Trainer, settings: TrainSettings, epoch: int, history: History) -> None:
    """Weights, optimizer state, settings and history in one safetensors file, written atomically."""
    from safetensors.numpy import save_file

    from .weights import atomic_path, metadata_for

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

    from .weights import read_metadata

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


def plot_curves(history: History, path: Path, title: str) -> None:
    """Training loss per step and test loss / accuracy per epoch, as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .weights import atomic_path

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    steps_per_epoch = len(history.step_loss) / max(len(history.epochs), 1)
    ax_loss.plot(np.arange(1, len(history.step_loss) + 1) / steps_per_epoch, history.step_loss, lw=0.8,
                 label="train (per step)")
    epochs = [e["epoch"] for e in history.epochs]
    ax_loss.plot(epochs, [e["test_loss"] for e in history.epochs], "o-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * e["test_accuracy"] for e in history.epochs], "o-")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def fit(trainer: Trainer, data: Any, settings: TrainSettings, out: Path,
        progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> History:
    """Train for ``settings.epochs`` (resuming from ``out``'s checkpoint if there is one),
    with a checkpoint, the weights, the JSON log and the curves written after every epoch."""
    from .datasets import augment_batch

    out.mkdir(parents=True, exist_ok=True)
    done, history = 0, History()
    if (out / CHECKPOINT).exists():
        done, history = load_checkpoint(out / CHECKPOINT, trainer, settings)
        progress(f"resuming from {out / CHECKPOINT} after epoch {done}")
    n = len(data.x_train)
    steps = -(-n // settings.batch)
    for epoch in range(done + 1, settings.epochs + 1):
        order = epoch_order(n, settings.seed, epoch)
        trainer.reseed(settings.seed * 100_003 + epoch)
        rng = np.random.default_rng([settings.seed, epoch, 1])
        t0, seen, losses = time.perf_counter(), 0, []
        for i in range(steps):
            idx = order[i * settings.batch:(i + 1) * settings.batch]
            x = data.x_train[idx]
            if settings.augment:
                x = augment_batch(x, rng)
            losses.append(trainer.step(x, data.y_train[idx]))
            if not math.isfinite(losses[-1]):
                raise RosettaError(f"the loss became {losses[-1]} at epoch {epoch}, step {i + 1}: "
                                   "lower --lr")
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
        _write_epoch(trainer, settings, epoch, history, out)
    return history


def _write_epoch(trainer: Trainer, settings: TrainSettings, epoch: int, history: History, out: Path) -> None:
    from .weights import atomic_path, save_canonical

    save_checkpoint(out / CHECKPOINT, trainer, settings, epoch, history)
    save_canonical(out / WEIGHTS, trainer.spec, trainer.export_weights(), framework=settings.framework)
    log = {"settings": asdict(settings), "spec_overrides": dict(trainer.spec.overrides), "epochs_done": epoch,
           **asdict(history)}
    with atomic_path(out / LOG) as tmp:
        tmp.write_text(json.dumps(log, indent=1))
    plot_curves(history, out / CURVES, f"{settings.model} on {settings.data} ({settings.framework}, "
                                       f"{settings.optimizer['name']})")


def first_steps_curves(model: str, frameworks: list[str], *, steps: int = 20, batch: int = 64,
                       opt: OptimizerConfig | None = None, overrides: Mapping[str, Any] | None = None,
                       seed: int = 0) -> dict[str, list[float]]:
    """The training loss of the first ``steps`` steps on digits in each framework, from the
    same canonical start (PyTorch's torchvision-style initialisation from ``seed``), with
    dropout and augmentation off and the same batches: framework -> losses."""
    from . import datasets
    from .spec import load_spec

    base = {"in_channels": 1, "dropout": 0.0, **(overrides or {})}
    if "input_size" not in base:
        base["input_size"] = datasets.min_input_size(model, base)
    data = datasets.load("digits", load_spec(model, base).input_shape)
    spec = load_spec(model, {**base, "num_classes": data.num_classes})
    start = build_trainer("torch", spec, opt or OptimizerConfig(), seed=seed).export_weights()
    order = epoch_order(len(data.x_train), seed, 1)
    curves = {}
    for fw in frameworks:
        trainer = build_trainer(fw, spec, opt or OptimizerConfig(), start)
        curves[fw] = [trainer.step(data.x_train[idx], data.y_train[idx])
                      for idx in (order[i * batch:(i + 1) * batch] for i in range(steps))]
    return curves


def plot_first_steps(curves: Mapping[str, list[float]], path: str | Path, title: str) -> None:
    """The frameworks' loss curves on one plot, with the largest relative gap (PNG, atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .weights import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4))
    styles = ["-", "--", ":"]
    for (fw, losses), style in zip(curves.items(), styles * len(curves)):
        ax.plot(range(1, len(losses) + 1), losses, style, marker="o", ms=3, label=fw)
    ref = np.asarray(next(iter(curves.values())))
    gap = max(float(np.abs(np.asarray(c) - ref).max() / np.abs(ref).max()) for c in curves.values())
    ax.set(xlabel="step", ylabel="training loss (cross-entropy)", title=f"{title}\nlargest gap {gap:.1e} (relative)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def cmd_train(args: argparse.Namespace) -> int:
    """``rosetta train``: see ``register``."""
    from . import datasets
    from .spec import load_spec, parse_overrides

    if args.epochs < 1 or args.batch < 1:
        raise RosettaError(f"--epochs and --batch must be at least 1 (got {args.epochs}, {args.batch})")
    overrides = parse_overrides(args.set)
    overrides.setdefault("in_channels", 1)  # digits, MNIST and Fashion-MNIST are grayscale
    if "input_size" not in overrides:
        overrides["input_size"] = datasets.min_input_size(args.model, overrides)
    probe = load_spec(args.model, overrides)
    data = datasets.load(args.data, probe.input_shape)
    overrides.setdefault("num_classes", data.num_classes)
    spec = load_spec(args.model, overrides)
    opt = OptimizerConfig(args.optimizer, lr=args.lr if args.lr is not None else DEFAULT_LR[args.optimizer],
                          weight_decay=args.weight_decay)
    settings = TrainSettings(args.model, args.framework, args.data, args.epochs, args.batch, asdict(opt),
                             args.augment, overrides, args.seed)
    print(f"{spec.name} ({'x'.join(map(str, spec.input_shape))}, {data.num_classes} classes) on {data.name}: "
          f"{len(data.x_train)} train / {len(data.x_test)} test images, {args.framework}, {opt.name} "
          f"lr {opt.lr}", file=sys.stderr, flush=True)
    trainer = build_trainer(args.framework, spec, opt, seed=args.seed)
    history = fit(trainer, data, settings, Path(args.out))
    last = history.epochs[-1]
    print(f"{spec.name} {args.framework}: test accuracy {100 * last['test_accuracy']:.2f}% after "
          f"{last['epoch']} epochs; wrote {Path(args.out) / WEIGHTS}, {Path(args.out) / LOG}, "
          f"{Path(args.out) / CURVES}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command."""
    from .frameworks import FRAMEWORKS

    s = sub.add_parser("train", help="train a model on digits or MNIST-style IDX files",
                       description="Train MODEL on scikit-learn's digits or a directory of MNIST / Fashion-MNIST "
                       "IDX files. Writes OUT/checkpoint.safetensors (resumed automatically), "
                       "OUT/model.safetensors, OUT/log.json and OUT/curves.png after every epoch.")
    s.add_argument("model")
    s.add_argument("--framework", required=True, choices=list(FRAMEWORKS))
    s.add_argument("--data", required=True, metavar="digits|PATH",
                   help="'digits' or a directory with train-/t10k- images and labels IDX files (.gz or not)")
    s.add_argument("--epochs", type=int, default=10, metavar="N")
    s.add_argument("--batch", type=int, default=64, metavar="B")
    s.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.01 for sgd, 1e-3 for adam)")
    s.add_argument("--optimizer", choices=list(OPTIMIZERS), default="sgd",
                   help="sgd (momentum 0.9), adam or adamw")
    s.add_argument("--weight-decay", type=float, default=5e-4, help="coupled L2 (sgd, adam) or decoupled (adamw)")
    s.add_argument("--augment", action="store_true", help="the AlexNet paper's random crops and horizontal flips")
    s.add_argument("--seed", type=int, default=0, help="initialisation, data order and augmentation seed")
    s.add_argument("--set", action="append", default=[], metavar="key=value",
                   help="override a spec parameter (default: in_channels=1, the smallest input_size, "
                        "num_classes of the data)")
    s.add_argument("--out", required=True, metavar="DIR")
    s.set_defaults(func=cmd_train)
