"""A two-member process group between a trainer and a ``swift rollout`` server, for streaming weights.

NCCL where CUDA exists (GPU to GPU, no host copy), gloo elsewhere: the same code path, so the tests
run it for real on CPU machines. The group is independent of the trainer's own ``torch.distributed``
world (built from its own TCPStore), so it works under torchrun/DeepSpeed and in a server process
that has no world at all. The server hosts the store; the trainer is rank 0, the root of every broadcast.

The server's store and gloo sockets listen on the server's own address, never on all interfaces
unless ``swift rollout --host 0.0.0.0`` asked for that. (A plain ``TCPStore(host, ...)`` server
ignores ``host`` and listens on every interface.) NCCL opens its own sockets, chosen by
``NCCL_SOCKET_IFNAME``.
"""

from __future__ import annotations

import datetime
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

TRAINER_RANK, SERVER_RANK = 0, 1

_DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64)}


_ALL_INTERFACES = ("0.0.0.0", "::", "")


@dataclass
class Group:
    process_group: object
    store: object  # the process group needs its store alive


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host`` (an address or a name) and listening, for the store's server."""
    family, kind, proto, _, address = socket.getaddrinfo(host or "0.0.0.0", port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


def open_group(host: str, port: int, rank: int, backend: str, timeout_s: float = 600.0) -> Group:
    """Join the group (blocks until both members have joined).

    The server (``SERVER_RANK``) listens on ``host``; the trainer connects to it there.
    """
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"weight-transfer backend must be 'nccl' or 'gloo'; got {backend!r}")
    serving = rank == SERVER_RANK
    listen_fd = listening_socket(host, port).detach() if serving else None  # the store closes it
    store = dist.TCPStore(
        host, port, world_size=2, is_master=serving, timeout=timeout, wait_for_workers=False, master_listen_fd=listen_fd
    )
    if backend == "nccl":
        return Group(dist.ProcessGroupNCCL(store, rank, 2), store)
    if not serving or host in _ALL_INTERFACES:
        return Group(dist.ProcessGroupGloo(store, rank, 2, timeout), store)
    options = dist.ProcessGroupGloo._Options()  # gloo's own sockets on the same address as the store
    options._timeout = timeout
    options._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
    return Group(dist.ProcessGroupGloo(store, rank, 2, options), store)


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
