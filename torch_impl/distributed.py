"""Data-parallel training in PyTorch: a process group and ``DistributedDataParallel``.

One process per device (``rosetta train --devices N`` starts N of them on one machine,
``torchrun`` on several; ``training/distributed.py``). Each process joins the group from
torchrun's environment (``init_process_group`` with ``env://``: RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT), gloo on CPUs and NCCL on GPUs (device ``cuda:LOCAL_RANK``), builds the same model
from the same seed (DDP also broadcasts process 0's parameters and buffers when it wraps the
model), and trains on its rows of every global batch (:func:`replica_batch`, the sampler). The
backward pass all-reduces the gradients: DDP's default hook averages them over the processes,
in buckets while the backward is still running.

BatchNorm: every process normalises with its own B/N examples (per-replica statistics), and
DDP broadcasts process 0's running statistics before every forward, so the model holds the
statistics of process 0's rows. One process that splits each batch into N chunks and
accumulates their gradients computes the same step (``parity_tests/distributed``).
``--sync-bn`` converts the BatchNorm layers to ``torch.nn.SyncBatchNorm`` (global statistics),
which DDP accepts only for GPU modules.
"""
from __future__ import annotations

import datetime
import os
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from rosetta_cnn.core.errors import RosettaError
from rosetta_cnn.core.spec import ModelSpec
from rosetta_cnn.training.distributed import Plan, replica_rows, resolved
from rosetta_cnn.training.trainer import OptimizerConfig

from . import runtime
from .model import build_model
from .train import TorchTrainer
from .weights import import_weights

#: how long a process waits for the others (rendezvous and every collective) before failing
TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("ROSETTA_DP_TIMEOUT", 1800)))


def replica_batch(x: np.ndarray, rank: int, world: int) -> np.ndarray:
    """The rows of a global batch that process ``rank`` of ``world`` trains on."""
    return x[replica_rows(len(x), rank, world)]


def replica_loss(loss: torch.Tensor, world: int) -> torch.Tensor:
    """What a process back-propagates: its own mean loss, since DDP averages the gradients
    over the ``world`` processes (a sum here would make the step ``world`` times too large)."""
    return loss


class DDPTrainer(TorchTrainer):
    """``TorchTrainer`` whose step runs ``DistributedDataParallel`` on this process's rows."""

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, opt: OptimizerConfig, engine: TorchEngine):
        model.to(engine.device)
        if engine.plan.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        super().__init__(model, spec, opt)
        self.engine, self.device = engine, engine.device
        index = [engine.device.index] if engine.device.type == "cuda" else None
        self.network = DistributedDataParallel(model, device_ids=index, output_device=engine.device.index)
        self.replica_shape: tuple[int, ...] | None = None  # the rows this process last trained on

    def step(self, x_nchw: np.ndarray, y: np.ndarray) -> float:
        """One data-parallel step on a global batch; returns its mean loss over all processes."""
        rank, world = self.engine.rank, self.engine.world
        x, y = replica_batch(x_nchw, rank, world), replica_batch(y, rank, world)
        self.replica_shape = tuple(x.shape)
        loss = self._loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        replica_loss(loss, world).backward()  # DDP all-reduces the gradients here
        self.optimizer.step()
        total = loss.detach().clone()
        dist.all_reduce(total)  # for the log only: the global batch's mean loss
        return float(total) / world

    def predict(self, x_nchw: np.ndarray) -> np.ndarray:
        """Eval-mode logits of this process's model (every process holds the same weights)."""
        device = "gpu" if self.device.type == "cuda" else "cpu"
        return runtime.forward(self.model, x_nchw, train=False, device=device)["logits"]


class TorchEngine:
    """This process's member of the process group, and its device."""

    def __init__(self, plan: Plan):
        cuda = torch.cuda.is_available()
        if plan.sync_bn and not cuda:
            raise RosettaError("--sync-bn: torch.nn.SyncBatchNorm needs CUDA devices (DistributedDataParallel "
                               "refuses SyncBatchNorm layers in CPU modules); on CPUs each process normalises "
                               "with its own rows (per-replica statistics), so leave --sync-bn out")
        self.backend = "nccl" if cuda else "gloo"
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local)
        self.device = torch.device("cuda", local) if cuda else torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(self.backend, timeout=TIMEOUT)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.plan = resolved(plan, processes=self.world, process_index=self.rank, devices=self.world)

    @property
    def name(self) -> str:
        return f"{self.plan.engine} ({self.backend}, {self.world} processes)"

    def build_trainer(self, spec: ModelSpec, opt: OptimizerConfig, *, seed: int = 0,
                      tensors: Mapping[str, np.ndarray] | None = None) -> DDPTrainer:
        model = build_model(spec, seed=seed, initialize=tensors is None)  # tensors set every weight
        if tensors is not None:
            import_weights(model, spec, tensors)
        return DDPTrainer(model, spec, opt, self)

    def gather(self, value: int) -> list[int]:
        """``value`` from every process, in rank order."""
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, int(value))
        return [int(v) for v in values]

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def setup(plan: Plan) -> TorchEngine:
    """Join the process group torchrun's environment describes (``training/distributed.py``)."""
    return TorchEngine(plan)
