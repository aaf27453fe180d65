"""ms-swift plugin files run unchanged: ``from swift.rewards import ORM, orms`` and its kin resolve here.

ms-swift plugin files import its base classes and registries from ``swift.*`` (4.x: ``swift.rewards``,
``swift.rollout``, ``swift.infer_engine``...; 3.x: ``swift.plugin``, ``swift.llm``...). Each plugin file
runs with its own ``__import__`` (the ``__import__`` of the ``__builtins__`` its module is given), which
answers imports of ``swift`` and ``swift.*`` from :data:`MODULES` and hands every other import to Python.

Why this way: nothing is added to ``sys.modules`` or ``sys.path``, so no ``swift`` package exists for
any other code, and a real ms-swift installed alongside is never shadowed; code outside plugin files
imports it as usual. Plugin files always get swift-cispo's names, also when ms-swift is installed,
since the registries they fill must be the ones swift rlhf reads. The hook lives as long as the plugin's
functions, so an import inside a function body (ms-swift's plugin.py imports ``MathAccuracy`` in a
constructor) works whenever the function runs. As ms-swift's loader puts the plugin's folder first on
``sys.path``, a plugin may import a module file next to it by name; that file gets the same hook.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Callable

from ..errors import UserError
from .ms_swift_bases import unavailable

_ORMS = {
    "ORM": "swift_cispo.compat.ms_swift_bases:ORM",
    "AsyncORM": "swift_cispo.compat.ms_swift_bases:AsyncORM",
    "orms": "swift_cispo.rewards:orms",
}
_MATH = {"MathAccuracy": "swift_cispo.rewards.builtin:Accuracy"}
_RM = {name: f"swift_cispo.rewards.rm_plugin:{name}" for name in ("rm_plugins", "DefaultRMPlugin", "GenRMPlugin")}
_TURNS = {
    name: f"swift_cispo.rollout.multi_turn:{name}"
    for name in ("multi_turns", "MultiTurnScheduler", "RolloutScheduler", "GYMScheduler", "OpenEnvScheduler")
}
_GYM = {name: f"swift_cispo.rollout.gym_env:{name}" for name in ("Env", "envs")}
_CONTEXT = {name: f"swift_cispo.rollout.gym_env:{name}" for name in ("ContextManager", "context_managers")}
_PROTOCOL = {
    name: f"swift_cispo.rollout.protocol:{name}"
    for name in (
        "InferRequest", "RolloutInferRequest", "RequestConfig", "ChatMessage", "ChatCompletionResponseChoice",
        "ChatCompletionResponse", "RolloutOutput", "UsageInfo", "Messages",
    )
}  # fmt: skip
_UTILS = {
    "get_logger": "swift_cispo.compat.ms_swift_bases:get_logger",
    "to_device": "swift_cispo.compat.ms_swift_bases:to_device",
    "remove_response": "swift_cispo.rollout.protocol:remove_response",
}
_NO_TEMPLATE = "ms-swift's prompt templates; swift-cispo formats prompts with the model's own chat template (its tokenizer)"

#: ms-swift module -> name -> ``"swift_cispo.module:attribute"``, or ``(None, why)`` for a name that is
#: importable (ms-swift's examples import it for type hints) but ends in a sentence when used.
MODULES: dict[str, dict] = {
    "swift": {},
    # ms-swift 4.x. Its treepo example imports MultiTurnScheduler from swift.rewards, which ms-swift's own
    # swift.rewards lacks (that import fails there); it is given here so that the example loads.
    "swift.rewards": {**_ORMS, **_RM, "MultiTurnScheduler": _TURNS["MultiTurnScheduler"], "multi_turns": _TURNS["multi_turns"]},
    "swift.rewards.orm": {**_ORMS, **_MATH},
    "swift.rewards.rm_plugin": _RM,
    "swift.rollout": {**_TURNS, **_GYM},
    "swift.rollout.multi_turn": {**_TURNS, **_GYM, **_PROTOCOL},
    "swift.rollout.gym_env": {**_GYM, "Messages": _PROTOCOL["Messages"], "RolloutInferRequest": _PROTOCOL["RolloutInferRequest"]},
    "swift.infer_engine": {**_PROTOCOL, "TransformersEngine": "swift_cispo.rollout.transformers_engine:TransformersEngine"},
    "swift.infer_engine.protocol": _PROTOCOL,
    "swift.template": {"Template": (None, _NO_TEMPLATE), "Messages": _PROTOCOL["Messages"]},
    "swift.utils": _UTILS,
    # ms-swift 3.x
    "swift.plugin": {**_ORMS, **_RM, **_TURNS, **_GYM, **_CONTEXT},
    "swift.plugin.orm": {**_ORMS, **_MATH},
    "swift.plugin.rm_plugin": _RM,
    "swift.plugin.multi_turn": {**_TURNS, **_PROTOCOL},
    "swift.plugin.env": _GYM,
    "swift.plugin.context_manager": _CONTEXT,
    "swift.llm": {**_PROTOCOL, **_UTILS, "Template": (None, _NO_TEMPLATE), "PtEngine": "swift_cispo.rollout.transformers_engine:TransformersEngine"},
    "swift.llm.infer": _PROTOCOL,
    "swift.llm.infer.protocol": _PROTOCOL,
}

#: ms-swift depends on modelscope, whose ``Messages`` type its treepo example imports; given to plugin
#: files only where modelscope itself is not installed.
MODELSCOPE_MODULES: dict[str, dict] = {
    "modelscope": {},
    "modelscope.preprocessors": {},
    "modelscope.preprocessors.templates": {},
    "modelscope.preprocessors.templates.utils": {"Messages": _PROTOCOL["Messages"]},
}


_MODELS = "ms-swift's model registry; swift-cispo loads --model with transformers"
_TEMPLATES = "ms-swift's template registry; swift-cispo formats prompts with the model's chat template"
_DATASETS = "ms-swift's dataset registry; swift-cispo reads --dataset files and folders as they are"
_ENGINES = "ms-swift's inference engines; swift-cispo generates with TRL (HF generate or vLLM)"
#: Why well-known ms-swift names and modules have no counterpart for plugin files (the sentence says so).
WHY: dict[str, str] = {
    **dict.fromkeys(("get_model_tokenizer", "get_model_processor", "register_model", "ModelMeta", "ModelGroup"), _MODELS),
    **dict.fromkeys(("get_template", "register_template", "TemplateMeta", "StdTemplateInputs"), _TEMPLATES),
    **dict.fromkeys(("load_dataset", "register_dataset", "DatasetMeta", "RowPreprocessor", "ResponsePreprocessor"), _DATASETS),
    **dict.fromkeys(("VllmEngine", "GRPOVllmEngine", "InferEngine", "LmdeployEngine", "SglangEngine"), _ENGINES),
    **dict.fromkeys(("prms", "PRM"), "process reward models are not built in swift-cispo"),
    **dict.fromkeys(("loss_mapping", "get_loss_func"), "register a loss with swift_cispo.register_loss (docs/losses.md)"),
    "swift.megatron": "Megatron training is not part of swift-cispo",
    "swift.model": _MODELS,
    "swift.dataset": _DATASETS,
    "swift.loss": "register a loss with swift_cispo.register_loss (docs/losses.md)",
    "swift.trainers": "ms-swift's trainers; swift-cispo's trainer is swift_cispo.GRPOTrainer",
    "swift.rlhf_trainers": "ms-swift's trainers; swift-cispo's trainer is swift_cispo.GRPOTrainer",
}


class PluginImportError(UserError, ImportError):
    """An ms-swift name swift-cispo does not provide: a user error, and an ImportError a plugin may catch."""


def _caller() -> str:
    """``plugin.py line 18``: where, in the plugin file, the import being answered is written."""
    frame = sys._getframe(2)
    return f"{Path(frame.f_code.co_filename).name} line {frame.f_lineno}"


class _Module(types.ModuleType):
    """One ms-swift module as a plugin file sees it: its names resolved on first use."""

    def __init__(self, name: str, table: dict, importer: "PluginImporter"):
        super().__init__(name)
        self._table = table
        self._importer = importer

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        full = f"{self.__name__}.{attr}"
        if full in self._importer.modules:
            return self._importer.module(full)
        if attr not in self._table:
            offered = ", ".join(sorted(self._table)) or "only its submodules"
            why = f": {WHY[attr]}" if attr in WHY else f" ({self.__name__} here has: {offered})"
            raise PluginImportError(
                f"plugin file {_caller()} imports {attr} from {self.__name__}, which swift-cispo does not provide to "
                f"ms-swift plugin files{why}"
            )
        target = self._table[attr]
        if isinstance(target, tuple):
            value = unavailable(self._importer.plugin, self.__name__, attr, target[1])
        else:
            module_name, _, name = target.partition(":")
            value = getattr(importlib.import_module(module_name), name)
        setattr(self, attr, value)
        return value


class PluginImporter:
    """The ``__import__`` of one plugin file: ms-swift's modules from the tables, sibling files, then Python's."""

    def __init__(self, plugin: Path, load_sibling: Callable[[Path], types.ModuleType]):
        self.plugin = plugin.name
        self.folder = plugin.resolve().parent
        self.load_sibling = load_sibling
        self.modules = dict(MODULES)
        if importlib.util.find_spec("modelscope") is None:
            self.modules.update(MODELSCOPE_MODULES)
        self._made: dict[str, _Module] = {}

    def module(self, name: str) -> _Module:
        if name not in self._made:
            self._made[name] = _Module(name, self.modules[name], self)
        return self._made[name]

    def __call__(self, name, globals=None, locals=None, fromlist=(), level=0):
        top = name.partition(".")[0]
        if level == 0 and top in ("swift", "modelscope") and top in self.modules:
            if name not in self.modules:
                reason = next((WHY[m] for m in WHY if name == m or name.startswith(m + ".")), None)
                provided = ", ".join(sorted(m for m in self.modules if m.startswith(top + ".")))
                why = f": {reason}" if reason else f" (provided: {provided})"
                raise PluginImportError(
                    f"plugin file {_caller()} imports {name}, an ms-swift module that swift-cispo does not provide to "
                    f"plugin files{why}"
                )
            return self.module(name) if fromlist else self.module(top)
        if level == 0 and name == top and (self.folder / f"{name}.py").is_file():
            return self.load_sibling(self.folder / f"{name}.py")
        return builtins.__import__(name, globals, locals, fromlist, level)


def plugin_builtins(plugin: Path, load_sibling: Callable[[Path], types.ModuleType]) -> dict:
    """The ``__builtins__`` a plugin file runs with: Python's, with ms-swift's module paths answered here."""
    namespace = dict(builtins.__dict__)
    namespace["__import__"] = PluginImporter(plugin, load_sibling)
    return namespace
