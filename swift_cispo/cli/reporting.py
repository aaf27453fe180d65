"""``--report_to``: checked before training, so that a typo or a missing package is one sentence."""

from __future__ import annotations

import importlib.util

from ..errors import UserError

# Integration -> the modules that provide it (any one will do), and how to get one.
_REPORTER_PACKAGES = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboard"),
    "wandb": (("wandb",), "pip install wandb (WANDB_MODE=offline logs without an account)"),
    "trackio": (("trackio",), "pip install trackio"),
    "mlflow": (("mlflow",), "pip install mlflow"),
    "comet_ml": (("comet_ml",), "pip install comet_ml"),
    "clearml": (("clearml",), "pip install clearml"),
    "swanlab": (("swanlab",), "pip install swanlab"),
    "neptune": (("neptune",), "pip install neptune"),
    "dvclive": (("dvclive",), "pip install dvclive"),
}


def check_reporting(report_to: list[str] | None) -> None:
    """A UserError for a --report_to integration that is unknown or whose package is not installed.

    transformers would fail on either deep inside the trainer's constructor, with a traceback.
    """
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in report_to or []:
        if name not in INTEGRATION_TO_CALLBACK:
            allowed = ", ".join(["none", "all", *sorted(INTEGRATION_TO_CALLBACK)])
            raise UserError(f"--report_to {name} is not a known integration; allowed: {allowed}")
        modules, install = _REPORTER_PACKAGES.get(name, ((), ""))
        if modules and not any(importlib.util.find_spec(module) for module in modules):
            raise UserError(f"--report_to {name} needs the {modules[0]} package, which is not installed: {install}")
