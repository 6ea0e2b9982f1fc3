"""Multi-process runs under ``torchrun`` (PyTorch DDP), after torchvision's reference ``utils.py``.

sfseg has no launcher of its own: ``torchrun --nproc_per_node N -m sfseg.cli.main adapt ...`` (or the
``sfseg`` script) sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init` reads them. In one process
every helper here is the identity, so single-process code paths are the same code.

Conventions: each rank works on its own device (``cuda:LOCAL_RANK``, or the CPU with the ``gloo``
backend); work is sharded by **whole batches** (batch ``b`` on rank ``b % world``), so anything that
depends on batch composition (BatchNorm in train mode) gives the same result for any number of
processes; counters are summed with :func:`all_reduce_sum`; rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place in the run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, batch_index: int) -> bool:
        """Whether batch ``batch_index`` of a sharded pass is this rank's."""
        return batch_index % self.world == self.rank


SINGLE = Dist()


ENV_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def from_env(environ: dict | None = None) -> Dist:
    """The rank layout ``torchrun`` describes in the environment (one process when it is absent).

    The variables are checked together, since a stray one (``WORLD_SIZE=2`` left in a shell,
    ``LOCAL_WORLD_SIZE=0``) would otherwise fail deep inside PyTorch or divide by zero.

    Raises:
        ConfigError: naming the variable, its value and what it must be.
    """
    env = os.environ if environ is None else environ
    values = {}
    for name in ENV_VARIABLES:
        text = env.get(name)
        if text is None or text == "":
            continue
        try:
            values[name] = int(text)
        except ValueError:
            raise _env_error(name, text, "an integer") from None
    world = values.get("WORLD_SIZE", 1)
    if not 1 <= world <= 65536:
        raise _env_error("WORLD_SIZE", world, "at least 1")
    local_world = values.get("LOCAL_WORLD_SIZE", world if world > 1 else 1)
    if not 1 <= local_world <= world:
        raise _env_error("LOCAL_WORLD_SIZE", local_world, f"in 1..WORLD_SIZE ({world})")
    if world == 1:
        for name in ("RANK", "LOCAL_RANK"):
            if values.get(name, 0) != 0:
                raise _env_error(name, values[name], "0 when WORLD_SIZE is 1 (or unset)")
        return SINGLE
    if "RANK" not in values:
        raise _env_error("RANK", None, f"set with WORLD_SIZE={world} (launch with torchrun, which sets both)")
    rank, local_rank = values["RANK"], values.get("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise _env_error("RANK", rank, f"in 0..{world - 1} (WORLD_SIZE is {world})")
    if not 0 <= local_rank < local_world:
        raise _env_error(
            "LOCAL_RANK", local_rank, f"in 0..{local_world - 1} (LOCAL_WORLD_SIZE {local_world})"
        )
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            raise _env_error(name, None, f"set with WORLD_SIZE={world} (torchrun sets it)")
    return Dist(rank, world, local_rank)


def local_world_size(environ: dict | None = None) -> int:
    """How many processes of this run share this machine (``LOCAL_WORLD_SIZE``, checked; 1 alone)."""
    env = os.environ if environ is None else environ
    d = from_env(env)
    return int(env.get("LOCAL_WORLD_SIZE") or d.world) if d.enabled else 1


def _env_error(name: str, value, must: str):
    from sfseg.errors import ConfigError

    shown = "unset" if value is None else f"{value!r}"
    return ConfigError(
        f"environment variable {name} is {shown}; it must be {must}. Unset the torchrun variables "
        f"({', '.join(ENV_VARIABLES)}) to run in one process"
    )


def init(device_name: str = "auto") -> tuple[Dist, torch.device]:
    """Join the process group when launched by ``torchrun``; return the layout and this rank's device.

    ``auto`` is ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU; NCCL on CUDA, gloo on the CPU.
    An explicit ``cuda`` becomes ``cuda:LOCAL_RANK`` so that ranks never share a device by accident.
    """
    d = from_env()
    device = resolve_device(device_name, d.local_rank)
    if device.type == "cuda":
        # Fixed input sizes (crops, the inference size): let cuDNN pick the fastest algorithms once.
        torch.backends.cudnn.benchmark = True
    if d.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` = this rank's CUDA device when there is one, else the CPU; ``cuda`` = ``cuda:local_rank``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    if name.startswith("cuda") and not torch.cuda.is_available():
        from sfseg.errors import ConfigError

        raise ConfigError(f"runtime.device is {name!r} but CUDA is not available here; use auto or cpu")
    return torch.device(name)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks (in place, and returned); the identity in one process.

    NCCL reduces device tensors only; gloo reduces host tensors only: ``t`` is moved as the backend needs
    and returned on its own device.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return t
    backend = dist.get_backend()
    if backend == "gloo" and t.device.type != "cpu":
        host = t.cpu()
        dist.all_reduce(host)
        t.copy_(host)
        return t
    dist.all_reduce(t)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
