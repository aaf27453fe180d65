"""ms-swift's own example plugin files (tests/fixtures/ms_swift_plugins, vendored with their commit) load
through --external_plugins unchanged, register their names, and compute ms-swift's rewards."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import sys
from pathlib import Path

import pytest

from swift_cispo.errors import UserError
from swift_cispo.plugins import load_plugin
from swift_cispo.rewards import build_orm, orms, reward_function, rm_plugins
from swift_cispo.rollout import context_managers, envs, multi_turns

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ms_swift_plugins"
REGISTRIES = {"orms": orms, "rm_plugins": rm_plugins, "multi_turns": multi_turns, "envs": envs, "context_managers": context_managers}

# What each file registers, read off its `registry['name'] = Class` lines.
PLUGIN_PY_ORMS = {
    "external_countdown", "external_r1v_acc", "thinking_tips", "external_code_reward", "external_code_format",
    "external_code_reward_by_judge0", "external_tooluse_format_reward", "external_tooluse_length_reward",
    "external_tooluse_correct_reward",
}  # fmt: skip
EXPECTED = {
    "plugin.py": {
        "orms": PLUGIN_PY_ORMS | {"async_genrm"},
        "rm_plugins": {"my_rmplugin", "qwenlong"},
        "multi_turns": {"tool_call_scheduler"},
        "envs": {"custom_env"},
    },
    "plugin_v3.py": {  # ms-swift 3.9.3: swift.plugin / swift.llm paths
        "orms": PLUGIN_PY_ORMS,
        "rm_plugins": {"my_rmplugin", "qwenlong"},
        "multi_turns": {"tool_call_scheduler"},
        "envs": {"custom_env"},
        "context_managers": {"custom_ctx"},
    },
    "gsm8k/gsm8k_plugin.py": {"orms": {"gsm8k_accuracy", "gsm8k_format"}},
    "treepo/tree_rollout_plugin.py": {"multi_turns": {"tree_rollout_scheduler"}},  # imports tree_rollout.py beside it
    "openenv/sudoku_scheduler.py": {"multi_turns": {"sudoku_scheduler"}},
}


def swift_modules() -> list[str]:
    return [m for m in sys.modules if m in ("swift", "modelscope") or m.startswith(("swift.", "modelscope."))]


@pytest.mark.parametrize("plugin", sorted(EXPECTED))
def test_ms_swift_example_plugin_registers_its_names_and_leaves_no_swift_module(plugin):
    before = {name: set(registry) for name, registry in REGISTRIES.items()}
    path_before = list(sys.path)
    load_plugin(str(FIXTURES / plugin))
    gained = {name: set(registry) - before[name] for name, registry in REGISTRIES.items()}
    assert {name: names for name, names in gained.items() if names} == EXPECTED[plugin]
    assert swift_modules() == []
    assert sys.path == path_before
    assert "tree_rollout" not in sys.modules  # treepo's sibling module lives under a swift_cispo_plugin_ name


def ms_swift_reward(name: str, plugin: str = "plugin.py", **options):
    load_plugin(str(FIXTURES / plugin))
    return reward_function(name, options)


def chat(*texts: str) -> list:
    """Completions as TRL passes them for chat prompts: ms-swift's ORMs must still see plain strings."""
    return [[{"role": "assistant", "content": text}] for text in texts]


def test_countdown_reward_of_plugin_py():
    reward = ms_swift_reward("external_countdown")
    completions = chat("<answer>(1+2)*3</answer>", "<answer>1+2+3</answer>", "<answer>3*3</answer>", "9")
    rows = {"target": [9, 9, 9, 9], "nums": [[1, 2, 3]] * 4}
    assert reward(prompts=[[{"role": "user", "content": "make 9"}]] * 4, completions=completions, **rows) == [1.0, 0.0, 0.0, 0.0]


def test_r1v_accuracy_and_code_format_rewards_of_plugin_py():
    accuracy = ms_swift_reward("external_r1v_acc")
    completions = ["<answer>42</answer>", "<answer>41</answer>", "42"]
    assert accuracy(prompts=["q"] * 3, completions=completions, solution=["<answer>42</answer>"] * 3) == [1.0, 0.0, 1.0]
    code_format = reward_function("external_code_format", {})
    good = "<think>plan</think>\n<answer>```python\nprint(1)\n```</answer>"
    assert code_format(prompts=["q"] * 2, completions=[good, "print(1)"], verification_info=[{"language": "python"}] * 2) == [1.0, 0.0]


def test_tool_use_rewards_of_plugin_py(monkeypatch):
    for variable in ("MAX1STEP30MAX3", "SCHEDULEREWARD", "SCHEDULELENGTH", "CORRECTMAX1", "REFINEDREWARD", "COARSEREWARD", "INTERMEDIATEREWARD"):
        monkeypatch.delenv(variable, raising=False)
    state = argparse.Namespace(global_step=0)
    call = '<tool_call>\n{"name": "search", "parameters": {"q": "cispo"}}\n</tool_call>'
    fmt = ms_swift_reward("external_tooluse_format_reward")
    completions = ["<think>a</think>\n<response>hi</response>", "<response>hi</response>"]
    assert fmt(prompts=["q"] * 2, completions=completions, solution=["<response>hi</response>"] * 2, trainer_state=state) == [1.0, 0.0]
    length = reward_function("external_tooluse_length_reward", {})
    thought = "<think>" + " ".join(["w"] * 256) + "</think>"  # 256 of 512 words
    assert length(prompts=["q"] * 2, completions=[thought, "no thinking"], solution=["x"] * 2, trainer_state=state) == [0.5, 0.0]
    correct = reward_function("external_tooluse_correct_reward", {})
    solutions = [call, call, "<response>no call</response>"]
    completions = [f"<think>t</think>\n{call}", "<think>t</think> no call", "anything"]
    assert correct(prompts=["q"] * 3, completions=completions, solution=solutions, trainer_state=state) == [3.0, -3.0, 0.0]


def test_gsm8k_rewards():
    accuracy = ms_swift_reward("gsm8k_accuracy", "gsm8k/gsm8k_plugin.py")
    completions = ["so the answer is \\boxed{72}", "#### 1,000", "#### 71"]
    assert accuracy(prompts=["q"] * 3, completions=completions, solution=["... #### 72", "#### 1000", "#### 72"]) == [1.0, 1.0, 0.0]
    fmt = reward_function("gsm8k_format", {})
    assert fmt(prompts=["q"] * 2, completions=chat("\\boxed{3}", "three"), solution=["3"] * 2) == [1.0, 0.0]


def test_async_ms_swift_orm_is_awaited_with_completion_texts(tmp_path):
    plugin = tmp_path / "async_length.py"
    plugin.write_text(
        "import asyncio\nfrom swift.rewards import AsyncORM, orms\n\nclass Length(AsyncORM):\n"
        "    async def __call__(self, completions, messages, **kwargs):\n        await asyncio.sleep(0)\n"
        "        return [float(len(c) + len(m)) for c, m in zip(completions, messages)]\n\norms['async_length'] = Length\n"
    )
    load_plugin(str(plugin))
    reward = reward_function("async_length", {})
    assert inspect.iscoroutinefunction(reward)
    prompts = [[{"role": "user", "content": "q"}], [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]]
    assert asyncio.run(reward(prompts=prompts, completions=chat("abc", "de"))) == [3.0 + 2, 2.0 + 3]


def test_import_inside_a_constructor_works_after_loading():
    """thinking_tips imports swift.rewards.orm.MathAccuracy when built, long after its file has loaded."""
    reward = ms_swift_reward("thinking_tips")
    trajectory = {"t1": [{"messages": [{"role": "assistant", "content": "\\boxed{2}"}], "solution": "2"}],
                  "t2": [{"messages": [{"role": "assistant", "content": "\\boxed{3}"}], "solution": "2"}]}  # fmt: skip
    assert reward(prompts=["q"] * 2, completions=["a", "b"], request_id=["t1", "t2"], trajectory_inputs=trajectory) == [1.0, 0.0]
    assert swift_modules() == []


def test_ms_swift_orm_gets_args_with_every_flag_and_the_conversation_as_messages():
    load_plugin(str(FIXTURES / "gsm8k" / "gsm8k_plugin.py"))
    orm = build_orm("gsm8k_format", {"args": argparse.Namespace(num_generations=8)})
    assert orm.args.num_generations == 8
    seen = {}

    class Spy(type(orm)):
        def __call__(self, completions, messages, **kwargs):
            seen.update(completions=completions, messages=messages)
            return [0.0] * len(completions)

    orms["spy"] = Spy
    reward_function("spy", {})(prompts=[[{"role": "user", "content": "1+1="}], "2+2="], completions=chat("2", "4")[:1] + ["4"])
    assert seen["completions"] == ["2", "4"]
    assert seen["messages"] == [
        [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}],
        [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}],
    ]


def test_a_reward_whose_constructor_fails_ends_in_one_sentence(monkeypatch):
    monkeypatch.delenv("JUDGE0_ENDPOINT", raising=False)
    load_plugin(str(FIXTURES / "plugin.py"))
    with pytest.raises(UserError) as err:
        build_orm("external_code_reward_by_judge0", {"args": argparse.Namespace()})
    assert str(err.value) == (
        "reward function 'external_code_reward_by_judge0' could not be built: AssertionError: "
        "Judge0 endpoint is not set. Please set the JUDGE0_ENDPOINT environment variable."
    )


def test_tool_call_scheduler_of_plugin_py_runs_a_tool_turn():
    """ms-swift's MultiTurnScheduler.run drives the plugin's step/check_finished: the tool's output joins the
    reply with loss mask 0, and the final turn continues the same assistant message."""
    from swift_cispo.rollout import ChatCompletionResponse, ChatCompletionResponseChoice, ChatMessage, RequestConfig, RolloutInferRequest

    class CharTokenizer:
        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

    class ScriptedEngine:
        def __init__(self, *turns):
            self.turns, self.requests = list(turns), []

        async def infer_async(self, request, request_config, **kwargs):
            self.requests.append([dict(m) for m in request.messages])
            text, ids = self.turns.pop(0)
            choice = ChatCompletionResponseChoice(index=0, message=ChatMessage("assistant", text), finish_reason="stop", token_ids=list(ids))
            return ChatCompletionResponse(model="scripted", choices=[choice])

    load_plugin(str(FIXTURES / "plugin.py"))
    engine = ScriptedEngine(("Action: calculator\nAction Input: 2+3\n", [1, 2, 3]), ("So 5.", [4, 5]))
    scheduler = multi_turns["tool_call_scheduler"](engine, tokenizer=CharTokenizer())
    output = asyncio.run(scheduler.run(RolloutInferRequest(messages=[{"role": "user", "content": "2+3?"}]), RequestConfig()))
    tool = [ord(c) for c in "Result: 5"]
    assert output.response_token_ids == [[1, 2, 3, *tool, 4, 5]]
    assert output.response_loss_mask == [[1, 1, 1, *[0] * len(tool), 1, 1]]
    assert output.messages[-1] == {"role": "assistant", "content": "Action: calculator\nAction Input: 2+3\nResult: 5So 5."}
    assert output.rollout_infos == {"tool_results": "Result: 5", "num_turns": 2}
    assert engine.requests[1][-1]["content"].endswith("Result: 5")


def test_registered_schedulers_environments_and_rm_plugins_are_found():
    from swift_cispo.rewards.rm_plugin import rm_plugin_class
    from swift_cispo.rollout.gym_env import env_class
    from swift_cispo.rollout.multi_turn import scheduler_class

    load_plugin(str(FIXTURES / "plugin.py"))
    assert scheduler_class("tool_call_scheduler").__name__ == "ToolCallScheduler"
    assert env_class("custom_env").__module__ != "swift_cispo.rollout.gym_env"  # the plugin file's class
    with pytest.raises(UserError, match=r"^unknown multi-turn scheduler 'nope'; registered: forced_interruption, gym_scheduler, math_tip_trick, openenv_scheduler, thinking_tips_scheduler, tool_call_scheduler"):
        scheduler_class("nope")
    assert rm_plugin_class("qwenlong").__name__ == "QwenLongPlugin"
    with pytest.raises(UserError, match=r"^unknown reward-model plugin 'nope'; registered: default, genrm, my_rmplugin, qwenlong"):
        rm_plugin_class("nope")
    with pytest.raises(UserError, match=r"^unknown gym environment 'nope'; registered: .*custom_env"):
        env_class("nope")


def test_ms_swift_names_without_a_meaning_here_end_in_one_sentence(tmp_path):
    template = tmp_path / "uses_template.py"
    template.write_text("from swift.template import Template\n\nTemplate()\n")
    with pytest.raises(UserError) as err:
        load_plugin(str(template))
    assert str(err.value).startswith(f"plugin file {template.name} uses swift.template.Template, which swift-cispo does not have: ms-swift's prompt templates")
    engine = tmp_path / "uses_engine.py"
    engine.write_text("from swift.llm import VllmEngine\n\nVllmEngine(None)\n")
    with pytest.raises(UserError, match=r"^plugin file uses_engine.py line 1 imports VllmEngine from swift.llm, which swift-cispo does not provide to ms-swift plugin files: ms-swift's inference engines"):
        load_plugin(str(engine))
    missing_name = tmp_path / "missing_name.py"
    missing_name.write_text("import os\nfrom swift.rewards.orm import CosineReward\n")
    with pytest.raises(UserError) as err:
        load_plugin(str(missing_name))
    assert str(err.value) == (
        "plugin file missing_name.py line 2 imports CosineReward from swift.rewards.orm, which swift-cispo does not "
        "provide to ms-swift plugin files (swift.rewards.orm here has: AsyncORM, MathAccuracy, ORM, orms)"
    )
    missing_module = tmp_path / "missing_module.py"
    missing_module.write_text("from swift.megatron import MegatronArguments\n")
    with pytest.raises(UserError) as err:
        load_plugin(str(missing_module))
    assert str(err.value) == (
        "plugin file missing_module.py line 1 imports swift.megatron, an ms-swift module that swift-cispo does not "
        "provide to plugin files: Megatron training is not part of swift-cispo"
    )
    other_module = tmp_path / "other_module.py"
    other_module.write_text("import swift.ui\n")
    with pytest.raises(UserError, match=r"^plugin file other_module.py line 1 imports swift.ui, .* \(provided: swift.infer_engine, "):
        load_plugin(str(other_module))
    registry_name = tmp_path / "registry_name.py"
    registry_name.write_text("from swift.llm import get_template\n")
    with pytest.raises(UserError, match=r"^plugin file registry_name.py line 1 imports get_template from swift.llm, .*: ms-swift's template registry"):
        load_plugin(str(registry_name))
    assert swift_modules() == []


def test_a_plugin_may_catch_the_import_error(tmp_path):
    plugin = tmp_path / "optional.py"
    plugin.write_text(
        "try:\n    from swift.rewards import prms\nexcept ImportError:\n    prms = None\n"
        "from swift.rewards import ORM, orms\n\nclass Empty(ORM):\n    def __call__(self, completions, **kwargs):\n"
        "        return [0.0] * len(completions)\n\norms['empty'] = Empty if prms is None else None\n"
    )
    load_plugin(str(plugin))
    assert orms["empty"].__name__ == "Empty"


def test_every_import_form_reaches_the_same_registry(tmp_path):
    plugin = tmp_path / "forms.py"
    plugin.write_text(
        "import swift\nimport swift.rewards.orm as orm_module\nfrom swift import plugin\nfrom swift.rewards import orms\n"
        "from swift_cispo.rewards import orms as cispo_orms\n"
        "assert swift.rewards.orm.orms is orm_module.orms is plugin.orms is orms is cispo_orms\n"
        "orms['forms'] = swift.plugin.ORM\n"
    )
    load_plugin(str(plugin))
    assert orms["forms"].inputs_convention == "ms_swift"
    assert swift_modules() == []


def test_a_real_ms_swift_is_not_shadowed(tmp_path, monkeypatch):
    """With a `swift` package importable, other code still imports it; plugin files still fill swift-cispo's registries."""
    package = tmp_path / "site" / "swift"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("REAL_MS_SWIFT = True\n")
    (package / "rewards.py").write_text("orms = {}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    load_plugin(str(FIXTURES / "gsm8k" / "gsm8k_plugin.py"))
    assert {"gsm8k_accuracy", "gsm8k_format"} <= set(orms)
    import swift.rewards

    assert swift.REAL_MS_SWIFT and swift.rewards.orms == {}
    for name in [m for m in sys.modules if m == "swift" or m.startswith("swift.")]:
        monkeypatch.delitem(sys.modules, name)


def test_default_rm_plugin_scores_a_batch_as_each_row_alone(tiny_model_dir):
    """DefaultRMPlugin with a tokenizer as its template: the first logit per conversation, padding not changing it."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    plugin = rm_plugins["default"](model=model, template=tokenizer)
    rows = [{"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}], "solution": "2"},
            {"messages": [{"role": "user", "content": "12+30="}, {"role": "assistant", "content": "42 it is"}], "solution": "42"}]  # fmt: skip
    batch = plugin(rows)
    alone = torch.cat([plugin([row]) for row in rows])
    assert batch.shape == (2,)
    assert torch.allclose(batch, alone, atol=1e-5)
    assert not torch.allclose(batch[0], batch[1])


@pytest.mark.slow
def test_ms_swift_plugin_rewards_train_from_the_command_line(tmp_path, tiny_model_dir):
    """plugin.py's ToolUseCorrectnessReward gives -3 to any reply without the expected tool call (none of a
    4-token reply has one), so its logged mean is exactly -3; gsm8k_format gives 0."""
    from helpers import FAST, read_metrics, swift

    call = '<tool_call>\n{"name": "add", "parameters": {"a": 1}}\n</tool_call>'
    rows = [{"messages": [{"role": "user", "content": f"{a}+{b}="}], "solution": call} for a in range(4) for b in range(4)]
    data = tmp_path / "tools.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "run"
    result = swift(
        "rlhf", "--model", tiny_model_dir, "--dataset", data, "--output_dir", out,
        "--external_plugins", FIXTURES / "plugin.py", FIXTURES / "gsm8k" / "gsm8k_plugin.py",
        "--reward_funcs", "external_tooluse_correct_reward", "gsm8k_format", *FAST, cwd=tmp_path,
        CORRECTMAX1="0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [m for m in read_metrics(out) if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert all(m["rewards/external_tooluse_correct_reward/mean"] == -3.0 for m in steps)
    assert all(m["rewards/gsm8k_format/mean"] == 0.0 for m in steps)
