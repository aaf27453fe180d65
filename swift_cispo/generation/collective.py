"""A two-member process group between a trainer and a ``swift rollout`` server, for streaming weights.

NCCL where CUDA exists (GPU to GPU, no host copy), gloo elsewhere: the same code path, so the tests
run it for real on CPU machines. The group is independent of the trainer's own ``torch.distributed``
world (built from its own TCPStore), so it works under torchrun/DeepSpeed and in a server process
that has no world at all. The server hosts the store; the trainer is rank 0, the root of every broadcast.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist

TRAINER_RANK, SERVER_RANK = 0, 1

_DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64)}


@dataclass
class Group:
    process_group: object
    store: object  # the process group needs its store alive


def open_group(host: str, port: int, rank: int, backend: str, timeout_s: float = 600.0) -> Group:
    """Join the group (blocks until both members have joined)."""
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size=2, is_master=rank == SERVER_RANK, timeout=timeout, wait_for_workers=False)
    if backend == "nccl":
        group = dist.ProcessGroupNCCL(store, rank, 2)
    elif backend == "gloo":
        group = dist.ProcessGroupGloo(store, rank, 2, timeout)
    else:
        raise ValueError(f"weight-transfer backend must be 'nccl' or 'gloo'; got {backend!r}")
    return Group(group, store)


def broadcast(group: Group, tensor: torch.Tensor) -> None:
    options = dist.BroadcastOptions()
    options.rootRank = TRAINER_RANK
    group.process_group.broadcast([tensor], options).wait()


def describe(named_tensors) -> list[list]:
    """Names, dtypes and shapes: what the server allocates before receiving."""
    return [[name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)] for name, tensor in named_tensors]


def receive(group: Group, metadata: list[list], device: str) -> list[tuple[str, torch.Tensor]]:
    """The server's side of one update: one broadcast per tensor, in the order of ``metadata``."""
    received = []
    for name, dtype, shape in metadata:
        if dtype not in _DTYPES:
            raise ValueError(f"tensor {name} has dtype {dtype}, which the weight transfer does not carry")
        tensor = torch.empty(shape, dtype=_DTYPES[dtype], device=device)
        broadcast(group, tensor)
        received.append((name, tensor))
    return received
