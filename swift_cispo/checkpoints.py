"""Checkpoints: which are complete, which one a run resumes from, and the rollouts a checkpoint carries.

transformers writes a checkpoint folder file by file, in place: a run killed while saving leaves a
folder that looks like a checkpoint but is not one. It writes ``trainer_state.json`` last, so a
folder without it (or with a truncated one) was interrupted; a truncated weights or optimizer file is
caught by reading its length and index rather than by loading it. Nothing here unpickles anything.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path

from .errors import UserError

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
#: Written by each process before ``trainer_state.json``: the rollouts left in its generation window.
ROLLOUT_STATE = "rollout_state_{rank}.safetensors"
#: Words that make ``--resume_from_checkpoint`` pick the newest complete checkpoint of ``--output_dir``.
LATEST = ("true", "latest")
_NOT_RESUMING = ("", "false", "none")

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin")


def checkpoint_step(path: Path) -> int | None:
    """N of a folder named ``checkpoint-N``, else None."""
    match = CHECKPOINT_PATTERN.match(path.name)
    return int(match.group(1)) if match else None


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unreadable (truncated, bad header), or None.

    The format is an 8-byte header length, a JSON header giving each tensor's byte range, then the
    data: a complete file is exactly as long as its header says.
    """
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return f"{path.name} is truncated"
            (header_len,) = struct.unpack("<Q", prefix)
            header = json.loads(handle.read(header_len))
    except (OSError, ValueError):
        return f"{path.name} is truncated or not a safetensors file"
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if path.stat().st_size != 8 + header_len + end:
        return f"{path.name} is truncated"
    return None


def _torch_file_problem(path: Path) -> str | None:
    """torch.save writes a zip archive whose directory sits at its end: a cut file has none."""
    return None if zipfile.is_zipfile(path) else f"{path.name} is truncated"


def incomplete_reason(folder: Path) -> str | None:
    """Why ``folder`` is not a checkpoint a run can resume from, or None when it is one."""
    if not folder.exists():
        return "it does not exist"
    if not folder.is_dir():
        return "it is not a folder"
    state_file = folder / TRAINER_STATE
    if not state_file.is_file():
        return f"it has no {TRAINER_STATE}, so its save was interrupted"
    try:
        int(json.loads(state_file.read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {TRAINER_STATE} is truncated or unreadable"
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        return "it holds no model weights"
    deepspeed = (folder / "latest").is_file()  # DeepSpeed keeps the optimizer in global_stepN/ instead
    if not deepspeed and not (folder / "optimizer.pt").is_file():
        return "it holds only the model (saved with --save_only_model), not the optimizer state a resumed run needs"
    for path in sorted(folder.iterdir()):
        if path.suffix == ".safetensors":
            problem = safetensors_problem(path)
        elif path.suffix in (".pt", ".pth"):
            problem = _torch_file_problem(path)
        else:
            continue
        if problem:
            return problem
    # Each process writes its own RNG and rollout files; with rollout files, every process must have one.
    rng_ranks = len(list(folder.glob("rng_state*.pth")))
    rollout_ranks = saved_rollout_ranks(folder)
    if rollout_ranks and rollout_ranks != rng_ranks:
        return f"it has rollout state from {rollout_ranks} of its {rng_ranks} processes"
    return None


def saved_rollout_ranks(folder: Path) -> int:
    """How many processes saved their rollout state in ``folder``."""
    return len(list(folder.glob(ROLLOUT_STATE.format(rank="*"))))


def checkpoints_newest_first(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return [path for _, path in sorted(found, reverse=True)]


def newest_complete(output_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint of ``output_dir``, and the newer incomplete ones passed over (with why)."""
    skipped = []
    for folder in checkpoints_newest_first(output_dir):
        reason = incomplete_reason(folder)
        if reason is None:
            return folder, skipped
        skipped.append((folder, reason))
    return None, skipped


def resolve_resume(value: str | None, output_dir: str | None) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The checkpoint ``--resume_from_checkpoint value`` names (None: not resuming), and incomplete ones skipped.

    ``true``/``latest`` mean the newest complete checkpoint in ``--output_dir``; anything else is a path.
    """
    if value is None or value.strip().lower() in _NOT_RESUMING:
        return None, []
    flag = f"--resume_from_checkpoint {value}"
    if value.strip().lower() in LATEST:
        if output_dir is None:
            raise UserError(f"{flag} looks for the newest checkpoint in --output_dir; give --output_dir, or a checkpoint path")
        folder, skipped = newest_complete(Path(output_dir).expanduser())
        if folder is None:
            seen = f" ({len(skipped)} incomplete, e.g. {skipped[0][0].name}: {skipped[0][1]})" if skipped else ""
            raise UserError(f"{flag} found no complete checkpoint-N folder in {output_dir}{seen}; start a new run instead")
        return folder, skipped
    folder = Path(value).expanduser()
    reason = incomplete_reason(folder)
    if reason is not None:
        newest, _ = newest_complete(folder.parent)
        hint = f"; the newest complete checkpoint there is {newest}" if newest is not None else ""
        raise UserError(f"cannot resume from {value}: {reason}{hint}")
    return folder, []


# --------------------------------------------------------------------------- rollout state
def save_rollout_state(folder: Path, rank: int, micro_step: int, buffered: list[dict] | None) -> bool:
    """Write this process's micro-step counter and buffered rollout slices (tensors) as safetensors.

    Returns False (and writes only the counter) when a slice holds something other than tensors
    and None, e.g. a multimodal list: the resumed run then regenerates that window.
    """
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    nones: list[str] = []
    complete = buffered is not None
    for index, batch in enumerate(buffered or []):
        for name, value in batch.items():
            key = f"{index}/{name}"
            if value is None:
                nones.append(key)
            elif isinstance(value, torch.Tensor):
                tensors[key] = value.detach().cpu().contiguous().clone()  # slices share storage; safetensors refuses that
            else:
                complete = False
    metadata = {"micro_step": str(micro_step), "slices": str(len(buffered or []) if complete else 0), "none": json.dumps(nones)}
    save_file(tensors if complete else {}, str(folder / ROLLOUT_STATE.format(rank=rank)), metadata=metadata)
    return complete


def load_rollout_state(folder: Path, rank: int, device=None) -> tuple[int, list[dict] | None] | None:
    """(micro-step counter, buffered slices or None) saved by :func:`save_rollout_state`; None without the file."""
    from safetensors import safe_open

    path = folder / ROLLOUT_STATE.format(rank=rank)
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = handle.metadata()
        slices = [{} for _ in range(int(metadata["slices"]))]
        for key in handle.keys():
            index, name = key.split("/", 1)
            tensor = handle.get_tensor(key)
            slices[int(index)][name] = tensor if device is None else tensor.to(device)
    for key in json.loads(metadata["none"]):
        index, name = key.split("/", 1)
        if int(index) < len(slices):
            slices[int(index)][name] = None
    return int(metadata["micro_step"]), (slices or None)
