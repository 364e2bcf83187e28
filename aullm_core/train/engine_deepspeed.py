"""DeepSpeed engine: ``deepspeed.initialize`` with a plain torch Adam, ZeRO stage 0, 2 or 3.

Single process works out of the box: the process group is created here (gloo on CPU, NCCL on
GPU; MASTER_ADDR=127.0.0.1 and a free port unless the environment sets them). Launched with
several processes (``torchrun`` / ``deepspeed``), each rank trains on its share of every batch
(``batch[rank::world]``) and test predictions are gathered from all ranks.

No DeepSpeed C++ op is compiled on CPU: the optimiser is torch's Adam, no fused ops are asked for,
and in a single-process run the shared-memory all-reduce kernel (a multi-process CPU speed-up whose
first build takes 30-70 s) is skipped. ``TORCH_EXTENSIONS_DIR`` defaults to a persistent cache for
the runs that do build it. fp16 is not offered with DeepSpeed (its fp16 mode casts the whole model;
use bf16, which needs no loss scaling, or the torch engine).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aullm_core.config import TrainConfig
from aullm_core.errors import ConfigError
from aullm_core.model.vlm import AULLM
from aullm_core.train.engine_torch import autocast_dtype, make_adam
from aullm_core.train.losses import LossFn

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _without_shm_kernel(skip: bool) -> Iterator[None]:
    """Skip building DeepSpeed's shared-memory all-reduce op (useless with one process)."""
    # importlib, not ``import deepspeed.comm.torch as ...``: deepspeed.comm's ``torch`` attribute is torch itself.
    ds_torch = importlib.import_module("deepspeed.comm.torch")
    original = getattr(ds_torch, "build_shm_op", None)
    if skip and original is not None:
        ds_torch.build_shm_op = lambda: None
    try:
        yield
    finally:
        if original is not None:
            ds_torch.build_shm_op = original


def ensure_distributed(device: torch.device) -> tuple[int, int]:
    """Initialise DeepSpeed's process group once per process; returns (rank, world_size)."""
    import deepspeed
    import deepspeed.comm as ds_comm

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "aullm" / "torch_extensions"))
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    if not ds_comm.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(_free_port())
        single = int(os.environ["WORLD_SIZE"]) == 1
        backend = "nccl" if device.type == "cuda" else "gloo"
        with _without_shm_kernel(single and device.type == "cpu"):
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return ds_comm.get_rank(), ds_comm.get_world_size()


def deepspeed_config(train: TrainConfig, world_size: int, device: torch.device) -> dict[str, object]:
    """The DeepSpeed JSON config for this fold (fp32 master weights; autocast is applied outside)."""
    micro = max(1, -(-train.batch_size // world_size))
    zero: dict[str, object] = {"stage": train.zero_stage}
    if device.type == "cpu":
        # DeepSpeed's default 5e8-element buckets cost seconds to allocate per step on CPU; the
        # trained parts here are ~60M parameters, so 2e7-element buckets lose nothing.
        zero.update(reduce_bucket_size=20_000_000, allgather_bucket_size=20_000_000)
        if train.zero_stage == 3:
            zero.update(stage3_prefetch_bucket_size=20_000_000, stage3_param_persistence_threshold=100_000)
    return {
        "train_batch_size": micro * world_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        "gradient_clipping": 0.0,  # DeepSpeed 0.19 clips at 1.0 unless told; the reference does not clip
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }


class DeepSpeedEngine:
    """Same interface as ``TorchEngine``; the optimiser step runs through DeepSpeed."""

    def __init__(
        self,
        model: AULLM,
        train: TrainConfig,
        device: torch.device,
        *,
        rebuild: Callable[[], AULLM] | None = None,
    ) -> None:
        import deepspeed

        self._rebuild = rebuild
        self.device = device
        self.dtype = autocast_dtype(train.precision, device)
        if self.dtype is torch.float16:
            raise ConfigError("train.precision='fp16' is not supported with engine=deepspeed: use bf16")
        self.rank, self.world_size = ensure_distributed(device)
        self.zero_stage = train.zero_stage
        optimizer = make_adam(model, train)
        with _without_shm_kernel(self.world_size == 1 and device.type == "cpu"):
            self.engine, _, _, _ = deepspeed.initialize(
                model=model, optimizer=optimizer, config=deepspeed_config(train, self.world_size, device)
            )
        self._model = model

    @property
    def module(self) -> nn.Module:
        return self.engine

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if self.dtype is None:
            return self.engine(clips)
        with torch.autocast(device_type=self.device.type, dtype=self.dtype):
            return self.engine(clips)

    def step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    def train_step(self, clips: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        """Forward, loss, backward and update on this rank's share of a batch; its loss, detached.

        The loss is sum-reduced, so it is scaled by the world size before DeepSpeed averages the
        gradients over ranks: the update is that of the whole batch's summed loss.
        """
        loss = loss_fn(self.forward(clips).float(), targets)
        self.step(loss * self.world_size)
        return loss.detach()

    def train(self) -> None:
        self.engine.train()

    def eval(self) -> None:
        self.engine.eval()

    def sum_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """Sum of ``value`` over all ranks (e.g. the epoch's loss over every rank's share)."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        total = value.detach().clone()
        dist.all_reduce(total)
        return total

    def gather_rows(self, rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Collect every rank's (rows, values) on all ranks, in row order."""
        if self.world_size == 1:
            return rows, values
        import torch.distributed as dist

        parts: list[object] = [None] * self.world_size
        dist.all_gather_object(parts, (rows, values))
        all_rows = np.concatenate([p[0] for p in parts])  # type: ignore[index]
        all_values = np.concatenate([p[1] for p in parts])  # type: ignore[index]
        order = np.argsort(all_rows, kind="stable")
        return all_rows[order], all_values[order]

    def trained_model(self) -> AULLM:
        """The trained module with full weights.

        Under ZeRO-3 the module's parameters are partitioned in place, so its trained tensors are
        gathered and loaded into a freshly built, unpartitioned model (``rebuild``).
        """
        if self.zero_stage != 3:
            return self._model
        import deepspeed

        if self._rebuild is None:
            raise ValueError("ZeRO-3 needs a rebuild function to return a usable trained model")
        with deepspeed.zero.GatheredParameters(list(self._model.parameters()), modifier_rank=None):
            state = self._model.trained_state_dict()
        fresh = self._rebuild()
        fresh.load_trained_state(state)
        return fresh
