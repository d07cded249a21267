"""Process-group setup from torchrun's environment, and collectives that carry gradients.

A run calls :func:`setup` once: it reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and, for more
than one process, ``MASTER_ADDR``/``MASTER_PORT``) as ``torchrun`` sets them, starts the default
process group (NCCL on CUDA, gloo on CPU) and picks the device. Every helper here also works in a
plain single process, where the collectives are the identity.

Gradients through the collectives follow one rule: the objective is the **sum of every rank's
loss**. :func:`gather_with_grad` and :func:`all_reduce_sum_with_grad` therefore sum the incoming
gradients over ranks in their backward pass. DDP then averages parameter gradients over ranks, so
a rank-local mean loss trains exactly like the mean loss over the combined batch in one process.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any, Literal, TypeVar

import attrs
import torch
import torch.distributed as dist

from contrastive.errors import IndivisibleBatchError, RunError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What :func:`setup` accepts as ``device``.
DeviceChoice = Literal["auto", "cuda", "cpu"]

_DEVICE_CHOICES = ("auto", "cuda", "cpu")

#: How long a rank waits for the others to reach the store (torch's default process-group timeout).
_STORE_TIMEOUT = datetime.timedelta(minutes=30)


@attrs.frozen
class DistInfo:
    """Where this process stands in the job.

    Attributes:
        rank: Global rank (0 in a single process).
        world_size: Number of processes (1 in a single process).
        local_rank: Rank on this node; selects the GPU.
        device: The device this process trains on.
        is_distributed: Whether a process group of more than one process is running.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_distributed: bool


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise RunError(f"environment variable {name}={raw!r} is not an integer") from None


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device not in _DEVICE_CHOICES:
        raise RunError(f"device must be one of {', '.join(_DEVICE_CHOICES)}, got {device!r}")
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise RunError(
            'device="cuda" was asked for, but CUDA is not available to this torch '
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); "
            'use device="cpu" or "auto"'
        )
    if device == "cpu" or not cuda:
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise RunError(
            f"LOCAL_RANK={local_rank} needs GPU {local_rank}, but this node has {count}; "
            "start at most one process per GPU (torchrun --nproc-per-node)"
        )
    return torch.device("cuda", local_rank)


def _init_process_group(rank: int, world_size: int, device: torch.device) -> None:
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise RunError(
            f"WORLD_SIZE={world_size} but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            "not set; start the job with torchrun, which sets them"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    log.info("initialising process group: backend=%s rank=%d world_size=%d", backend, rank, world_size)
    dist.init_process_group(
        backend=backend,
        store=_attempt_store(rank, world_size),
        rank=rank,
        world_size=world_size,
        device_id=device if device.type == "cuda" else None,
    )


def _attempt_store(rank: int, world_size: int) -> Any:
    """The key-value store the ranks meet in, its keys prefixed with torchrun's restart count.

    torchrun's agent hosts the store when it says so (``TORCHELASTIC_USE_AGENT_STORE``), else rank
    0 does, as ``env://`` would. The prefix is this project's own because, with torch 2.14, after
    ``torchrun --max-restarts`` restarted a job whose rank 0 was killed, ``env://`` let the new gloo
    ranks read the dead ranks' addresses and fail ("connectFullMesh failed ... Connection refused");
    see ``benchmarks/faults.py``, scenario ``elastic``.
    """
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    store = dist.TCPStore(  # type: ignore[attr-defined]
        os.environ["MASTER_ADDR"],
        _env_int("MASTER_PORT", 0),
        world_size,
        is_master=not agent_hosts and rank == 0,
        timeout=_STORE_TIMEOUT,
    )
    return dist.PrefixStore(  # type: ignore[attr-defined]
        f"/contrastive/attempt_{_env_int('TORCHELASTIC_RESTART_COUNT', 0)}", store
    )


def setup(device: str = "auto") -> DistInfo:
    """Start the process group (when torchrun asked for several processes) and pick the device.

    Args:
        device: ``"auto"`` (``cuda:LOCAL_RANK`` when CUDA is available, else CPU), ``"cuda"``
            (an error without CUDA) or ``"cpu"``.

    Returns:
        This process's rank, world size, local rank and device.

    Raises:
        RunError: ``device="cuda"`` without CUDA, an unknown device choice, more processes than
            GPUs on the node, or a multi-process environment without ``MASTER_ADDR``/``MASTER_PORT``.
    """
    local_rank = _env_int("LOCAL_RANK", 0)
    chosen = _pick_device(device, local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if dist.is_available() and dist.is_initialized():
        rank_, world = dist.get_rank(), dist.get_world_size()
    else:
        rank_, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
        if world > 1:
            _init_process_group(rank_, world, chosen)
    return DistInfo(
        rank=rank_, world_size=world, local_rank=local_rank, device=chosen, is_distributed=world > 1
    )


def teardown() -> None:
    """Destroy the default process group if one is running (safe to call in any case)."""
    if is_initialized():
        dist.destroy_process_group()


def local_batch_size(global_batch: int, world_size: int) -> int:
    """The one rule for sharing a global batch among ranks: each takes ``global_batch // world_size``.

    Raises:
        IndivisibleBatchError: ``global_batch`` is not a multiple of ``world_size``.
    """
    if world_size < 1 or global_batch % world_size:
        raise IndivisibleBatchError(f"{global_batch} is not divisible by the {world_size} ranks")
    return global_batch // world_size


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_budget(requested: int, num_workers: int) -> int:
    """Intra-op threads for one rank.

    Args:
        requested: ``runtime.threads``; a positive number is used as it is, 0 asks for the budget.
        num_workers: Data-loader worker processes this rank starts (each takes one core).

    Returns:
        ``requested`` when positive, else the usable cores divided among the ranks on this node
        (``LOCAL_WORLD_SIZE``, as torchrun sets it), minus the data workers, at least 1.
    """
    if requested > 0:
        return requested
    local_ranks = max(1, _env_int("LOCAL_WORLD_SIZE", 1))
    return max(1, usable_cores() // local_ranks - num_workers)


def is_initialized() -> bool:
    """Whether a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def rank(group: dist.ProcessGroup | None = None) -> int:
    """This process's rank in ``group`` (default: all processes); 0 without a process group."""
    return dist.get_rank(group) if is_initialized() else 0


def world_size(group: dist.ProcessGroup | None = None) -> int:
    """Number of processes in ``group`` (default: all); 1 without a process group."""
    return dist.get_world_size(group) if is_initialized() else 1


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_initialized():
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; identity in a single process)."""
    if not is_initialized():
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=src)
    result: T = box[0]
    return result


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gradient over ranks and keeps this rank's slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        ctx.rows = x.shape[0]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        start = dist.get_rank(ctx.group) * ctx.rows
        return total[start : start + ctx.rows], None


class _AllReduceSumWithGrad(torch.autograd.Function):
    """Sum over ranks; backward sums the gradient over ranks (each rank's loss uses the sum)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        total = x.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total, None


def gather_with_grad(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0, in rank order, keeping the autograd graph.

    Every rank must pass the same shape. The backward pass sums the gradient of the gathered
    tensor over ranks and returns this rank's rows, i.e. the gradient of the sum of all ranks'
    losses with respect to this rank's ``x``.

    Args:
        x: ``[N, ...]`` on this rank.
        group: Process group (default: all processes).

    Returns:
        ``[N * world_size(group), ...]``; ``x`` itself without a process group or in a group of one.
    """
    if world_size(group) == 1:
        return x
    out: torch.Tensor = _GatherWithGrad.apply(x, group)
    return out


def all_reduce_sum_with_grad(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Sum ``x`` over the ranks of ``group``, keeping the autograd graph.

    The backward pass sums the incoming gradients over ranks (the gradient of the sum of all ranks'
    losses), so every rank's ``x`` receives the gradient of every rank's use of the sum.

    Args:
        x: Any shape, the same on every rank.
        group: Process group (default: all processes).

    Returns:
        The elementwise sum, same shape as ``x``; ``x`` itself without a process group.
    """
    if world_size(group) == 1:
        return x
    out: torch.Tensor = _AllReduceSumWithGrad.apply(x, group)
    return out
