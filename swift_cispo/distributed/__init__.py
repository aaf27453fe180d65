"""Scale-out: DeepSpeed configs shipped with the package and the torchrun relaunch of ``swift rlhf``."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import first_line

DEEPSPEED_CONFIG_DIR = Path(__file__).parent / "deepspeed"

#: Names accepted by ``--deepspeed`` besides a path to a JSON file (ms-swift's built-in names).
BUILTIN_DEEPSPEED = ("zero0", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload")


def resolve_deepspeed_config(value: str | dict | None) -> dict | None:
    """``--deepspeed`` value -> the DeepSpeed config dict (or None).

    A built-in name loads the JSON shipped in ``swift_cispo/distributed/deepspeed/``; anything else must
    be a JSON file. Its ``"auto"`` values are filled later by transformers from the trainer's flags
    (batch sizes, accumulation, clipping, precision, optimizer settings), so a flag has one meaning
    whether or not DeepSpeed is on.
    """
    if value is None or isinstance(value, dict):
        return value
    if value in BUILTIN_DEEPSPEED:
        path = DEEPSPEED_CONFIG_DIR / f"{value}.json"
    else:
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(
                f"--deepspeed {value}: not a file and not a built-in config; use one of {', '.join(BUILTIN_DEEPSPEED)} "
                "or a path to a DeepSpeed JSON config"
            )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--deepspeed {value}: {path} is not valid JSON ({first_line(err)})") from None
    if not isinstance(config, dict):
        raise ValueError(f"--deepspeed {value}: {path} must hold a JSON object of DeepSpeed settings")
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"--deepspeed {value}: zero_optimization.stage must be 0, 1, 2 or 3; got {stage!r}")
    return config


def prepare_deepspeed(config) -> None:
    """Fill DeepSpeed's "auto" batch sizes with the real world size, once the process group may exist.

    transformers fills them while the arguments are built, before a torchrun worker has joined its
    group, so it counts a world of 1; ZeRO-3's ``zero.Init`` (run when the model is loaded) then fails
    its batch-size check. The trainer calls this, and so does the CLI before it loads a model; building
    a config joins no process group. Does nothing without DeepSpeed, or a second time.
    """
    template = getattr(config, "_deepspeed_template", None)
    if template is None or getattr(config, "_deepspeed_prepared", False):
        return
    import copy

    from accelerate.utils import DeepSpeedPlugin
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    import torch.distributed
    from deepspeed import comm as deepspeed_comm

    _ = config.device  # sets up the process group (torchrun's env://) and config.distributed_state
    if torch.distributed.is_initialized() and not deepspeed_comm.is_initialized():
        # the CPU (gloo) path: accelerate made torch's group but not DeepSpeed's view of it, and
        # DeepSpeed would otherwise count a world of 1
        deepspeed_comm.init_distributed(dist_backend=torch.distributed.get_backend(), auto_mpi_discovery=False)
    config.hf_deepspeed_config = HfTrainerDeepSpeedConfig(copy.deepcopy(template))  # also what zero.Init reads
    config.hf_deepspeed_config.trainer_config_process(config)
    config.deepspeed_plugin = DeepSpeedPlugin(hf_ds_config=config.hf_deepspeed_config)
    config._deepspeed_prepared = True
