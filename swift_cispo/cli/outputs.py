"""Where a command writes: the output-folder policy shared by ``swift rlhf``, ``swift export`` and the launcher.

A run gets a new folder (an existing non-empty one is refused, so nothing in it is overwritten), except
the folder of the checkpoint it resumes from; under a launcher or torchrun every process writes to the
one folder that rank 0 (or the launcher) checked.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import UserError


def resolve_output_dir(requested: str | None, loss_type: str, resume: Path | None = None) -> Path:
    """A new folder for this run; an existing non-empty one is refused so nothing in it is overwritten,
    except the folder of the checkpoint the run resumes from (its default), where the run goes on."""
    if requested is None:
        path = resume.parent if resume is not None else Path("output") / f"{loss_type}-{time.strftime('%Y%m%d-%H%M%S')}"
    else:
        path = Path(requested).expanduser()
    continuing = resume is not None and path.resolve() == resume.resolve().parent
    if not continuing and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"output_dir {path} already exists and is not empty; give a new --output_dir so nothing in it is overwritten")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"output_dir {path} is not writable ({err.strerror})") from None
    return path


def launcher_output_dir(requested: str | None, loss_type: str, plan, checkpoint: Path | None = None) -> Path:
    """The launcher fixes the output folder once, so that every worker writes to the same one.

    With several nodes each node's launcher runs this; only node 0 insists on a new folder, since on a
    shared file system the others may already see what node 0 wrote.
    """
    if plan.nnodes > 1 and requested is None and checkpoint is None:
        raise UserError("a run on several nodes needs --output_dir (the same path on every node)")
    if plan.node_rank > 0:
        path = Path(requested).expanduser() if requested else checkpoint.parent
        path.mkdir(parents=True, exist_ok=True)
        return path.resolve()
    return resolve_output_dir(requested, loss_type, checkpoint).resolve()


def worker_output_dir(requested: str | None) -> Path | None:
    """In a torchrun worker: the folder its launcher prepared, or None when this process must check it itself.

    Started by plain ``torchrun``, only rank 0 checks that the folder is new (the others would see the files
    rank 0 writes); they need the same explicit --output_dir, since a timestamped default could differ.
    """
    from ..distributed.launch import OUTPUT_DIR_ENV, global_rank, under_torchrun

    if not under_torchrun():
        return None
    prepared = os.environ.get(OUTPUT_DIR_ENV)
    if prepared and requested and Path(requested).expanduser().resolve() == Path(prepared):
        return Path(prepared)
    if int(os.environ["WORLD_SIZE"]) == 1:  # a lone worker checks its folder as a plain run does
        return None
    if requested is None:
        raise UserError("under torchrun give --output_dir, so that every process writes to the same folder")
    if global_rank() == 0:
        return None
    path = Path(requested).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_if_empty(path: Path) -> None:
    """Remove a folder this run created but left empty (a run that stopped before writing anything)."""
    try:
        path.rmdir()
    except OSError:  # not empty, or already gone
        pass
