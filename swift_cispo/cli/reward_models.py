"""``--reward_model`` / ``--reward_model_plugin``: reward models scored through ms-swift's plugin interface.

Checked when the command line is read (paths, plugin names, counts: nothing loads), loaded beside the
policy in each training process, and turned into reward functions
(:func:`swift_cispo.rewards.rm_plugin.reward_model_function`) that come after the ``--reward_funcs``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError


@dataclass(frozen=True)
class RewardModelSpec:
    """A reward model named on the command line, before it is loaded."""

    source: str
    plugin: str

    @property
    def name(self) -> str:
        return Path(self.source.rstrip("/")).name or self.source


def reward_model_specs(models: list[str] | None, plugins: list[str] | None) -> list[RewardModelSpec]:
    from ..rewards.rm_plugin import rm_plugin_class
    from .model import check_model_source

    models, plugins = list(models or []), list(plugins or [])
    if len(plugins) > len(models):
        raise UserError(f"--reward_model_plugin names {len(plugins)} plugins for {len(models)} --reward_model; give at most one per reward model")
    specs = []
    for index, source in enumerate(models):
        check_model_source(source, causal_lm=False)
        plugin = plugins[index] if index < len(plugins) else "default"
        rm_plugin_class(plugin)  # an unknown name stops here
        specs.append(RewardModelSpec(source, plugin))
    return specs


def _architectures(source: str) -> list[str]:
    config = Path(source).expanduser() / "config.json"
    if not config.is_file():
        return []
    return list(json.loads(config.read_text(encoding="utf-8")).get("architectures") or [])


def load_reward_models(reward_funcs: list, model_args, config) -> list:
    """``reward_funcs`` with each :class:`RewardModelSpec` replaced by a reward function scoring with that model."""
    if not any(isinstance(entry, RewardModelSpec) for entry in reward_funcs):
        return reward_funcs
    import os

    import torch

    device = "cpu"
    if torch.cuda.is_available() and not config.use_cpu:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return [_load(entry, model_args, device) if isinstance(entry, RewardModelSpec) else entry for entry in reward_funcs]


def _load(spec: RewardModelSpec, model_args, device: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from ..errors import first_line
    from ..rewards.rm_plugin import is_judge, reward_model_function, rm_plugin_class
    from .model import resolve_dtype

    plugin_class = rm_plugin_class(spec.plugin)
    classifier = any(name.endswith("ForSequenceClassification") for name in _architectures(spec.source))
    if plugin_class.__name__ == "DefaultRMPlugin" and not classifier and Path(spec.source).expanduser().exists():
        raise UserError(
            f"--reward_model {spec.source} is not a sequence-classification model (config.json architectures: "
            f"{', '.join(_architectures(spec.source)) or 'none'}); the default plugin reads a reward from its first logit: "
            "give a classifier, or --reward_model_plugin genrm to use this model as a judge"
        )
    loader = AutoModelForCausalLM if is_judge(plugin_class) or not classifier else AutoModelForSequenceClassification
    try:
        model = loader.from_pretrained(spec.source, dtype=resolve_dtype(model_args.torch_dtype), trust_remote_code=model_args.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(spec.source, trust_remote_code=model_args.trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"could not load reward model {spec.source}: {first_line(err)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # a classifier reads the last non-pad token
    model.to(device).eval()
    model.requires_grad_(False)
    return reward_model_function(plugin_class(model=model, template=tokenizer), spec.name)
