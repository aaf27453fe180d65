"""What a pickled checkpoint file would import when loaded, read from its opcodes: nothing is unpickled.

A resumed run loads its optimizer, scheduler and RNG state with torch's restricted unpickler
(``weights_only=True``), which refuses any global outside a short list with an ``UnpicklingError``
that suggests lifting the restriction; DeepSpeed loads its own state files with the unrestricted one,
where a planted global runs code. Reading the opcodes first names such a file in one sentence, before
anything is loaded. ``torch.save`` writes protocol-2 pickles, whose imports are all ``GLOBAL`` opcodes.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import pickletools
import zipfile
from pathlib import Path

#: Opcodes torch.save's protocol-2 pickles never contain; the restricted loader refuses them too.
_FOREIGN_OPCODES = frozenset({"STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"})


def _allowed(name: str, deepspeed: bool) -> bool:
    return name in _allowed_globals() or (deepspeed and _deepspeed_class(name))


@functools.cache
def _allowed_globals() -> set[str]:
    """What torch's restricted loader accepts, plus the numpy types transformers allows for the RNG state."""
    from torch import _weights_only_unpickler

    allowed = set(_weights_only_unpickler._get_allowed_globals())
    numpy = ("ndarray", "dtype", "dtypes.UInt32DType", "_core.multiarray._reconstruct", "core.multiarray._reconstruct")
    return allowed | {f"numpy.{name}" for name in numpy}


def _deepspeed_class(name: str) -> bool:
    """Whether ``module.Name`` is a class DeepSpeed pickles into its own states: an enum, a dataclass or a loss
    scaler, defined (not merely imported) in a ``deepspeed.`` module. Only such modules are imported to look."""
    module, _, attr = name.rpartition(".")
    if not module.startswith("deepspeed."):
        return False
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return False
    if not isinstance(found, type) or found.__module__ != module:
        return False
    return issubclass(found, enum.Enum) or dataclasses.is_dataclass(found) or found.__name__.endswith("LossScaler")


def pickle_problem(path: Path, deepspeed: bool = False) -> str | None:
    """Why the pickle inside a torch.save file would be refused (or run code), from its opcodes; None if it would not.

    Nothing is unpickled: the opcodes are only listed, and each imported global checked. ``deepspeed``:
    a DeepSpeed state file, which may also hold DeepSpeed's own enums, dataclasses and loss scaler.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
            data = archive.read(pickles[0]) if len(pickles) == 1 else None
    except (OSError, zipfile.BadZipFile):
        data = None
    shown = f"{path.parent.name}/{path.name}" if deepspeed else path.name
    if data is None:
        return f"{shown} is not a file torch.save writes; resume from a checkpoint this tool saved"
    what = None
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in _FOREIGN_OPCODES:
                what = f"the opcode {opcode.name}"
            elif opcode.name == "GLOBAL" and not _allowed(arg.replace(" ", "."), deepspeed):
                what = f"a reference to {arg.replace(' ', '.')}"
            if what:
                break
    except ValueError:
        what = "a pickle that cannot be read"
    if what is None:
        return None
    return (
        f"{shown} holds {what}, which the files swift-cispo saves never hold (a pickle that could run code, "
        "so it was not loaded); resume from a checkpoint this tool saved"
    )
