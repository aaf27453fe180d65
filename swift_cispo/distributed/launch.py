"""``NPROC_PER_NODE=N swift rlhf ...``: run the same command in N processes under torchrun.

ms-swift's convention: the environment variables NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR and
MASTER_PORT say how many processes to start and where they meet; the command line stays the same.
The launching process validates the flags first (so a typo is reported once, not N times), fixes
the output folder (so every process writes to the same one) and then starts the workers with
torch's elastic launcher in-process, which lets it turn a worker's failure into one sentence and
the worker's exit status instead of torchrun's traceback.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass

from ..errors import UserError

logger = logging.getLogger("swift_cispo")

#: Set by the launcher in every worker: the output folder it already created and checked.
OUTPUT_DIR_ENV = "SWIFT_CISPO_OUTPUT_DIR"


@dataclass(frozen=True)
class LaunchPlan:
    nproc_per_node: int
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


def under_torchrun(env=os.environ) -> bool:
    """True inside a process that torchrun (or another launcher of the env:// kind) started."""
    return "LOCAL_RANK" in env and "WORLD_SIZE" in env


def global_rank(env=os.environ) -> int:
    return int(env.get("RANK", "0"))


def _positive_int(env, name: str, default: int | None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{name}={raw!r} must be a whole number >= 1")
    return value


def launch_plan(env=os.environ, needs_launcher: bool = False) -> LaunchPlan | None:
    """The processes to start, from the environment; None when this process should train itself.

    ``needs_launcher`` (DeepSpeed): even one process is started through torch's launcher, which sets
    the rank variables DeepSpeed reads (otherwise it looks for MPI).
    """
    if under_torchrun(env):
        return None
    names = ("NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
    if not needs_launcher and not any(env.get(name) for name in names):
        return None
    nproc = _positive_int(env, "NPROC_PER_NODE", 1)
    nnodes = _positive_int(env, "NNODES", 1)
    raw_rank = env.get("NODE_RANK") or "0"
    if not raw_rank.isdigit() or int(raw_rank) >= nnodes:
        raise UserError(f"NODE_RANK={raw_rank!r} must be a whole number from 0 to NNODES-1 ({nnodes - 1})")
    if nnodes > 1 and not env.get("MASTER_ADDR"):
        raise UserError(f"NNODES={nnodes} needs MASTER_ADDR: the address of the node with NODE_RANK=0, reachable from every node")
    raw_port = env.get("MASTER_PORT")
    if raw_port:
        if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
            raise UserError(f"MASTER_PORT={raw_port!r} must be a port number from 1 to 65535")
        port = int(raw_port)
    elif nnodes > 1:
        port = 29500  # every node must agree, so a fixed default (torchrun's) rather than a free one
    else:
        port = free_port()
    return LaunchPlan(nproc, nnodes, int(raw_rank), env.get("MASTER_ADDR") or "127.0.0.1", port)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_arguments(plan: LaunchPlan, subcommand: str, argv: list[str]) -> list[str]:
    """torchrun's command line for the plan (what a user would type to do the same by hand)."""
    return [
        "--nproc_per_node", str(plan.nproc_per_node),
        "--nnodes", str(plan.nnodes),
        "--node_rank", str(plan.node_rank),
        "--master_addr", plan.master_addr,
        "--master_port", str(plan.master_port),
        "-m", "swift_cispo.cli.main", subcommand, *argv,
    ]  # fmt: skip


def _processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


def launch(plan: LaunchPlan, subcommand: str, argv: list[str], output_dir: str) -> int:
    """Start the workers of this node and wait for them; the exit status of the first that failed, or 0."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    # torch's launcher logs a traceback-like report for a failed worker; the worker has already said
    # what went wrong, so keep only our one-line summary.
    for name in ("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ[OUTPUT_DIR_ENV] = output_dir
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # what torchrun sets too; said here so it does not warn
    config, command, command_args = config_from_args(parse_args(torchrun_arguments(plan, subcommand, argv)))
    logger.info(
        "starting %s on this node (NODE_RANK %d of NNODES %d, %d in all; rendezvous %s:%d)",
        _processes(plan.nproc_per_node), plan.node_rank, plan.nnodes, plan.world_size, plan.master_addr, plan.master_port,
    )  # fmt: skip
    try:
        elastic_launch(config=config, entrypoint=command)(*command_args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        code = failure.exitcode if failure.exitcode and failure.exitcode > 0 else 1
        print(
            f"swift {subcommand}: error: process {rank} of {plan.world_size} exited with status {failure.exitcode}; "
            "its messages are above",
            file=sys.stderr,
        )
        return code
    except (KeyboardInterrupt, SignalException) as err:  # Ctrl-C or a kill: the workers have been stopped
        signal_number = getattr(err, "sigval", None)
        logger.error("stopped by %s; checkpoints saved so far are in %s", getattr(signal_number, "name", "Ctrl-C"), output_dir)
        return 128 + int(signal_number) if signal_number is not None else 130
    return 0
