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
from .pickles import pickle_problem

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


def _safetensors_header(path: Path) -> tuple[int, dict]:
    """(header length, header) of a .safetensors file: an 8-byte little-endian length, then that much JSON."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError("shorter than its header length")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > path.stat().st_size:  # a corrupted length: reading it would ask for exabytes
            raise ValueError("its header length exceeds the file")
        return header_len, json.loads(handle.read(header_len))


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unreadable (truncated, bad header), or None.

    The format is an 8-byte header length, a JSON header giving each tensor's byte range, then the
    data: a complete file is exactly as long as its header says.
    """
    try:
        header_len, header = _safetensors_header(path)
    except (OSError, ValueError):
        return f"{path.name} is truncated or not a safetensors file"
    try:
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, AttributeError):
        return f"{path.name} has a malformed header"
    if path.stat().st_size != 8 + header_len + end:
        return f"{path.name} is truncated"
    return None


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Each tensor's shape, from the header alone (no tensor data is read)."""
    _, header = _safetensors_header(path)
    return {name: list(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


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


# --------------------------------------------------------------------------- does it fit this run?
#: Files of a checkpoint folder that this tool writes (through transformers' Trainer, peft and DeepSpeed).
_OURS = re.compile(
    r"""^(trainer_state\.json|training_args\.bin|optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth
    |rollout_state_\d+\.safetensors|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json
    |pytorch_model(-\d+-of-\d+)?\.bin|adapter_model\.safetensors|latest|zero_to_(fp32|torch)\.py)$""",
    re.X,
)
#: DeepSpeed's folder of optimizer and model states, and the files in it.
_DEEPSPEED_DIR = re.compile(r"^global_step\d+$")
_DEEPSPEED_FILE = re.compile(r"^(\w+_)?(model|optim)_states\.pt$")
#: Suffixes of files a loader may unpickle or execute: one of these that this tool did not write is refused.
_LOADABLE = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz", ".py", ".so", ".safetensors"})
#: The pickled files a resumed run loads with torch's restricted loader (weights_only=True).
_PICKLED_STATE = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|pytorch_model(-\d+-of-\d+)?\.bin)$")


def check_resume_fits(folder: Path, model: str, trust_remote_code: bool = False, train_type: str = "full", lora_rank=None) -> None:
    """Before any data or weights load: refuse a checkpoint that would fail (or run code) on resume, in one sentence.

    Checked: a loadable file this tool does not write; a pickled state file that holds globals torch's
    restricted loader refuses (an ``UnpicklingError`` at resume, or code run by a less careful loader);
    weights (read from safetensors headers) whose shapes differ from ``model``'s.
    """
    problem = foreign_file(folder) or _pickles_problem(folder) or weights_problem(folder, model, trust_remote_code, train_type, lora_rank)
    if problem:
        raise UserError(f"cannot resume from {folder}: {problem}")


def _pickles_problem(folder: Path) -> str | None:
    """The first pickled state file a resumed run would load that holds more than tensors and plain data."""
    for path in sorted(folder.iterdir()):
        if _PICKLED_STATE.match(path.name):
            problem = pickle_problem(path)
        elif path.is_dir() and _DEEPSPEED_DIR.match(path.name):  # DeepSpeed unpickles these without restriction
            inner = (pickle_problem(p, deepspeed=True) for p in sorted(path.iterdir()) if _DEEPSPEED_FILE.match(p.name))
            problem = next(filter(None, inner), None)
        else:
            continue
        if problem:
            return problem
    return None


def foreign_file(folder: Path) -> str | None:
    """A file a loader could unpickle or execute that this tool never writes in a checkpoint, named, or None."""
    for path in sorted(folder.iterdir()):
        if path.is_dir() and _DEEPSPEED_DIR.match(path.name):
            inner = [f"{path.name}/{p.name}" for p in sorted(path.iterdir()) if not _DEEPSPEED_FILE.match(p.name)]
            strange = [name for name in inner if Path(name).suffix in _LOADABLE]
        elif path.suffix in _LOADABLE and not _OURS.match(path.name):
            strange = [path.name]
        else:
            continue
        if strange:
            return (
                f"{strange[0]} is not a file swift-cispo writes in a checkpoint (a {Path(strange[0]).suffix} file can run "
                "code when loaded); resume from a checkpoint this tool saved, or remove that file"
            )
    return None


def checkpoint_weight_shapes(folder: Path) -> tuple[str, dict[str, list[int]]] | None:
    """(file, name -> shape) of a checkpoint's weights from safetensors headers; None for pickled (.bin) weights."""
    if (folder / "adapter_model.safetensors").is_file():
        return "adapter_model.safetensors", safetensors_shapes(folder / "adapter_model.safetensors")
    if (folder / "model.safetensors").is_file():
        return "model.safetensors", safetensors_shapes(folder / "model.safetensors")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return index.name, {k: v for shard in shards for k, v in safetensors_shapes(folder / shard).items()}
    return None


def model_weight_shapes(model: str, trust_remote_code: bool = False) -> dict[str, list[int]] | None:
    """Each weight's shape for ``model``, from its config alone (built on the meta device: no memory, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source = str(Path(model).expanduser()) if Path(model).expanduser().exists() else model
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError):  # the model loader names these itself, a moment later
        return None
    return {name: list(tensor.shape) for name, tensor in meta.state_dict().items()}


def _lora_target(name: str) -> tuple[str, str] | None:
    """peft's ``base_model.model.X.lora_A.weight`` -> (``X.weight``, ``A``)."""
    match = re.match(r"^base_model\.model\.(.+)\.lora_([AB])(\.\w+)?\.weight$", name)
    return (f"{match.group(1)}.weight", match.group(2)) if match else None


def weights_problem(folder: Path, model: str, trust_remote_code=False, train_type="full", lora_rank=None) -> str | None:
    """Why the checkpoint's weights cannot be loaded into ``model`` (another shape, another kind), or None."""
    found = checkpoint_weight_shapes(folder)
    if found is None:
        return None
    file, saved = found
    adapter = file == "adapter_model.safetensors"
    if adapter and train_type != "lora":
        return f"it holds a LoRA adapter ({file}), not full weights; resume it with --train_type lora"
    if not adapter and train_type == "lora":
        return f"it holds full model weights ({file}), not a LoRA adapter; resume it with --train_type full"
    expected = model_weight_shapes(model, trust_remote_code)
    if expected is None:
        return None
    differ = []
    for name, shape in saved.items():
        if adapter:
            target = _lora_target(name)
            if target is None or target[0] not in expected:
                continue
            base, half = target
            rank_dim, feature_dim = (0, 1) if half == "A" else (1, 0)  # lora_A: (r, in); lora_B: (out, r)
            if lora_rank is not None and shape[rank_dim] != lora_rank:
                return f"its {file} has LoRA rank {shape[rank_dim]}, but --lora_rank is {lora_rank}; resume with --lora_rank {shape[rank_dim]}"
            if shape[feature_dim] != expected[base][feature_dim]:
                differ.append((name, shape, expected[base]))
        elif name in expected and shape != expected[name]:
            differ.append((name, shape, expected[name]))
    if not differ:
        return None
    name, shape, want = differ[0]
    more = f" ({len(differ) - 1} more weights differ)" if len(differ) > 1 else ""
    return (
        f"its {file} has {name} of shape {shape}, but --model {model} has {want}{more}, so it was saved from another "
        "model; resume with the --model that run trained, or start a new run"
    )


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
