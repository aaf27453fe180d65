"""Multi-turn rollouts: the tokens trained on are the tokens sampled, and the text between turns is context only.

The trajectory record is checked on the demo's tokenizer; the engine's batching with a deterministic backend;
then real training runs (transformers' generate) check, against an independent recomputation of the CISPO
loss and its gradient from a plain forward pass, that environment text is in neither the loss nor the
token count, and that reward functions score the final reply.
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from datasets import Dataset

from swift_cispo import GRPOConfig, GRPOTrainer
from swift_cispo.demo import DEMO_MODEL_DIR
from swift_cispo.demo.tiny import build_tokenizer
from swift_cispo.errors import UserError
from swift_cispo.rollout import MultiTurnScheduler, RolloutInferRequest, multi_turns
from swift_cispo.rollout.engine import TrajectoryEngine, render, run_trajectories
from swift_cispo.rollout.protocol import RequestConfig
from swift_cispo.rollout.trajectory import Trajectory, continue_with, decode, encode

TOKENIZER = build_tokenizer()
EOS = TOKENIZER.eos_token_id


def ids(text: str) -> list[int]:
    return encode(TOKENIZER, text)


def test_sampled_tokens_stay_trained_and_new_text_is_context():
    trajectory = Trajectory.start(ids("12+7="))
    trajectory.append(ids("18") + [EOS], trained=1, logprobs=[-0.1, -0.2, -0.3])
    conversation = [{"role": "user", "content": "12+7="}, {"role": "assistant", "content": "18"}, {"role": "user", "content": " no, again:"}]
    prompt = continue_with(trajectory, TOKENIZER, render(TOKENIZER, conversation))
    assert decode(TOKENIZER, prompt) == "12+7=18<eos> no, again:"
    assert trajectory.trained == [1, 1, 1] + [0] * len(" no, again:")
    assert trajectory.logprobs[:3] == [-0.1, -0.2, -0.3] and set(trajectory.logprobs[3:]) == {0.0}


def test_a_rewritten_reply_is_cut_back_to_what_the_conversation_still_says():
    """math_tip_trick continues '18' after a hint: the EOS that ended '18' is no longer in the conversation."""
    trajectory = Trajectory.start(ids("12+7="))
    trajectory.append(ids("18") + [EOS], trained=1)
    conversation = [{"role": "user", "content": "12+7="}, {"role": "assistant", "content": "18 wait,"}]
    prompt = continue_with(trajectory, TOKENIZER, render(TOKENIZER, conversation))
    assert decode(TOKENIZER, prompt) == "12+7=18 wait,"
    assert trajectory.trained == [1, 1] + [0] * len(" wait,")


def test_a_scheduler_that_rewrites_the_prompt_is_refused():
    trajectory = Trajectory.start(ids("12+7="))
    trajectory.append(ids("19"), trained=1)
    with pytest.raises(UserError, match="changed the first turn's prompt"):
        continue_with(trajectory, TOKENIZER, "13+7=19", "mine")


class Echo(MultiTurnScheduler):
    """Three turns; the 'environment' answers each with a fixed text."""

    def step(self, infer_request, response_choice, current_turn):
        infer_request.messages.append({"role": "user", "content": f" env{current_turn} "})
        return {"infer_request": infer_request}

    def check_finished(self, infer_request, response_choice, current_turn):
        return current_turn >= 3


def test_the_engine_generates_all_waiting_turns_in_one_batch():
    calls = []

    def backend(prompts, limits):  # deterministic: each turn answers with its prompt's length as text, then EOS
        calls.append(len(prompts))
        return [(ids(str(len(p) % 10)) + [EOS], None) for p in prompts]

    engine = TrajectoryEngine(TOKENIZER, backend, max_completion_length=40, eos_token_ids=[EOS])
    scheduler = Echo(infer_engine=engine)
    requests = [RolloutInferRequest(messages=[{"role": "user", "content": f"{i}+1="}], uuid=str(i)) for i in range(4)]
    outputs = asyncio.run(run_trajectories(scheduler, engine, requests, RequestConfig(max_tokens=40)))
    assert calls == [4, 4, 4]  # three turns, each one batch of the four trajectories
    assert [o.rollout_infos["num_turns"] for o in outputs] == [3, 3, 3, 3]
    trajectory = engine.trajectories["0"]
    text = decode(TOKENIZER, trajectory.completion_ids)
    assert text.count(" env1 ") == 1 and text.count(" env2 ") == 1 and text.count("<eos>") == 3
    assert sum(trajectory.trained) == 6  # three turns of one digit + EOS


def test_the_completion_budget_bounds_the_whole_trajectory():
    def backend(prompts, limits):
        return [([ids("7")[0]] * limit, None) for limit in limits]  # always runs to its limit

    engine = TrajectoryEngine(TOKENIZER, backend, max_completion_length=12, eos_token_ids=[EOS])

    class Forever(Echo):
        def check_finished(self, infer_request, response_choice, current_turn):
            return current_turn >= 10

    outputs = asyncio.run(run_trajectories(Forever(infer_engine=engine), engine, [RolloutInferRequest(messages=[{"role": "user", "content": "1+1="}], uuid="a")], RequestConfig(max_tokens=5)))
    trajectory = engine.trajectories["a"]
    assert trajectory.completion_length >= 12 and sum(trajectory.trained) <= 12
    assert outputs[0].rollout_infos["num_turns"] < 10  # a turn with no budget left ends the trajectory ('length')


# ---------------------------------------------------------------------------------------------- training
class Recording(GRPOTrainer):
    """Checks each micro-batch's loss against a recomputation from a plain forward pass, at the gradient."""

    checks: list = []

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        mask = inputs["completion_mask"] * inputs["tool_mask"]
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        width = inputs["completion_ids"].size(1)
        logits = model(input_ids=ids, attention_mask=attention).logits[:, -width - 1 : -1] / self.temperature
        log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)
        # first pass over a fresh rollout: pi_old is the current policy, so CISPO's weight is exactly 1
        reference = -(inputs["advantages"].unsqueeze(1) * log_probs * mask).sum() / inputs["window_num_tokens"]
        params = [p for p in model.parameters() if p.requires_grad]
        ours = torch.autograd.grad(loss, params, retain_graph=True)
        theirs = torch.autograd.grad(reference, params)
        gap = max((a - b).abs().max().item() for a, b in zip(ours, theirs))
        scale = max(b.abs().max().item() for b in theirs)
        Recording.checks.append({"inputs": {k: v.detach().clone() for k, v in inputs.items() if torch.is_tensor(v)},
                                 "loss": (loss.item(), reference.item()), "grad_gap": gap / max(scale, 1e-12)})  # fmt: skip
        return loss


def _train(tmp_path, scheduler: str, rows: list[dict], reward, **overrides):
    Recording.checks = []
    settings = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_generations=4, max_completion_length=32,
        max_steps=1, logging_steps=1, report_to="none", use_cpu=True, save_strategy="no", bf16=False, seed=0,
        multi_turn_scheduler=scheduler, learning_rate=1e-3,
    )  # fmt: skip
    config = GRPOConfig(**{**settings, **overrides})
    trainer = Recording(model=str(DEMO_MODEL_DIR), reward_funcs=reward, args=config, train_dataset=Dataset.from_list(rows))
    trainer.train()
    return trainer


ROWS = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "solution": str(a + b)} for a in range(10, 20) for b in range(1, 5)]


def test_environment_text_is_in_neither_the_loss_nor_the_token_count(tmp_path):
    multi_turns["test_echo"] = Echo
    scored = []

    def reward(completions, **kwargs):
        scored.extend(completions)
        return [float(len(c)) for c in completions]

    trainer = _train(tmp_path, "test_echo", ROWS, reward, max_turns=3)
    (check,) = Recording.checks
    inputs = check["inputs"]
    assert check["loss"][0] == pytest.approx(check["loss"][1], rel=1e-5, abs=1e-7)
    assert check["grad_gap"] < 1e-5
    sampled = inputs["completion_mask"] * inputs["tool_mask"]
    context = inputs["completion_mask"] * (1 - inputs["tool_mask"])
    assert inputs["window_num_tokens"].item() == sampled.sum().item()  # the token count: sampled tokens only
    for row in range(inputs["completion_ids"].size(0)):
        text = decode(TOKENIZER, inputs["completion_ids"][row][context[row].bool()].tolist())
        assert text == " env1  env2 ", text  # exactly the environment's text is context
        assert decode(TOKENIZER, inputs["completion_ids"][row][sampled[row].bool()].tolist()).count("<eos>") == 3
    assert scored and not any("env" in c for c in scored)  # rewards see the final reply, not the trajectory
    logged = [row for row in trainer.state.log_history if "multi_turn/turns" in row]
    assert logged[0]["multi_turn/turns"] == 3.0


def test_math_tip_trick_continues_a_wrong_reply_after_its_hint(tmp_path):
    from swift_cispo.rollout.multi_turn import MathTipsScheduler

    tip = MathTipsScheduler.tips_prompt
    _train(tmp_path, "math_tip_trick", ROWS, lambda completions, **kw: [float(tip in c) for c in completions], max_turns=2, max_completion_length=56)
    (check,) = Recording.checks
    inputs = check["inputs"]
    assert check["grad_gap"] < 1e-5
    context = inputs["completion_mask"] * (1 - inputs["tool_mask"])
    tipped = 0
    for row in range(inputs["completion_ids"].size(0)):
        completion = inputs["completion_ids"][row][inputs["completion_mask"][row].bool()].tolist()
        hint = decode(TOKENIZER, inputs["completion_ids"][row][context[row].bool()].tolist())
        if hint:
            tipped += 1
            assert hint == tip  # the hint is the only context, and the first reply's EOS was cut away
            assert decode(TOKENIZER, completion).count("<eos>") <= 1
    assert tipped > 0  # the demo model is wrong often enough at temperature 1 for some rows to get the hint


def test_forced_interruption_appends_the_phrase_at_the_thinking_budget(tmp_path):
    phrase = " Time is up. Answer: "
    trainer = _train(tmp_path, None, ROWS, lambda completions, **kw: [float(len(c)) for c in completions],
                     thinking_budget=2, interruption_phrase=phrase, max_completion_length=40)  # fmt: skip
    assert trainer.args.multi_turn_scheduler == "forced_interruption"
    (check,) = Recording.checks
    inputs = check["inputs"]
    assert check["grad_gap"] < 1e-5  # the phrase is context: in neither the loss nor the token count
    sampled = inputs["completion_mask"] * inputs["tool_mask"]
    context = inputs["completion_mask"] * (1 - inputs["tool_mask"])
    interrupted = 0
    for row in range(inputs["completion_ids"].size(0)):
        completion = inputs["completion_ids"][row][inputs["completion_mask"][row].bool()].tolist()
        inserted = decode(TOKENIZER, inputs["completion_ids"][row][context[row].bool()].tolist())
        if inserted:
            interrupted += 1
            assert inserted == phrase
            # exactly the thinking budget was sampled before the phrase
            start = int(context[row].nonzero()[0])
            assert int(sampled[row][:start].sum()) == 2 and EOS not in completion[:start]
        else:
            assert completion[-1] == EOS and len(completion) <= 2  # finished within the budget: one turn
    assert interrupted > 0  # the demo's answers run to 2-3 tokens and an EOS: most are cut at 2
    logged = [row for row in trainer.state.log_history if "multi_turn/interrupted" in row]
    assert logged[0]["multi_turn/interrupted"] == pytest.approx(interrupted / inputs["completion_ids"].size(0))


def test_thinking_budget_must_leave_room_for_an_answer(tmp_path):
    with pytest.raises(ValueError, match=r"thinking_budget must be a whole number in \[1, max_completion_length\)"):
        GRPOConfig(output_dir=str(tmp_path), thinking_budget=32, max_completion_length=32, use_cpu=True)
    with pytest.raises(ValueError, match="cannot be combined with multi_turn_scheduler math_tip_trick"):
        GRPOConfig(output_dir=str(tmp_path), thinking_budget=8, multi_turn_scheduler="math_tip_trick", use_cpu=True)


@pytest.mark.slow
def test_gym_env_rewards_are_the_environments(tmp_path):
    from swift_cispo.rollout import Env, envs

    class CountDigits(Env):
        """Each reply earns its number of digits; two replies end the episode."""

        def __init__(self, env_config):
            self.turns = 0

        async def reset(self, config):
            return "1+1=", {}, ""

        async def step(self, messages):
            self.turns += 1
            reply = messages[-1]["content"]
            return " more:", float(sum(ch.isdigit() for ch in reply)), self.turns >= 2, {}

        async def close(self):
            pass

    envs["test_digits"] = CountDigits
    trainer = _train(tmp_path, "gym_scheduler", ROWS, [], use_gym_env=True, gym_env="test_digits", max_turns=4)
    (check,) = Recording.checks
    assert check["grad_gap"] < 1e-5
    logged = [row for row in trainer.state.log_history if "rewards/gym_reward/mean" in row]
    assert logged and logged[0]["rewards/gym_reward/mean"] > 0
    assert logged[0]["multi_turn/turns"] == 2.0


def test_an_unknown_scheduler_is_named_before_the_model_loads(tmp_path):
    config = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", multi_turn_scheduler="no_such", num_generations=2, per_device_train_batch_size=2)
    with pytest.raises(UserError, match="unknown multi-turn scheduler 'no_such'; registered: .*math_tip_trick"):
        GRPOTrainer(model="/nonexistent/model", reward_funcs=lambda completions, **k: [0.0] * len(completions), args=config,
                    train_dataset=Dataset.from_list(ROWS))  # fmt: skip


def test_multi_turn_options_without_a_scheduler_are_refused(tmp_path):
    with pytest.raises(ValueError, match="max_turns configures multi-turn rollouts; give multi_turn_scheduler too"):
        GRPOConfig(output_dir=str(tmp_path), use_cpu=True, max_turns=3)


@pytest.mark.slow
def test_an_ms_swift_plugin_scheduler_trains_unchanged(tmp_path):
    """ms-swift's own example plugin file (tests/fixtures/ms_swift_plugins/plugin.py), its ReAct tool scheduler."""
    from pathlib import Path

    from swift_cispo.plugins import load_plugin

    load_plugin(str(Path(__file__).parent / "fixtures" / "ms_swift_plugins" / "plugin.py"))
    trainer = _train(tmp_path, "tool_call_scheduler", ROWS, lambda completions, **kw: [float(len(c)) for c in completions], max_turns=2)
    (check,) = Recording.checks
    assert check["grad_gap"] < 1e-5
    assert [row["multi_turn/turns"] for row in trainer.state.log_history if "multi_turn/turns" in row] == [1.0]  # no 'Action:' emitted


def test_a_scheduler_that_splits_trajectories_into_samples_is_refused_by_name(tmp_path):
    with pytest.raises(UserError, match="^multi-turn scheduler thinking_tips_scheduler makes one training sample per turn"):
        _train(tmp_path, "thinking_tips_scheduler", ROWS, lambda completions, **kw: [0.0] * len(completions))


def test_a_scheduler_that_shapes_the_whole_batch_is_refused_by_name(tmp_path):
    class Tree(MultiTurnScheduler):
        async def async_infer(self, infer_requests, request_config, **kwargs):
            return []

    multi_turns["test_tree"] = Tree
    config = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", multi_turn_scheduler="test_tree", num_generations=2, per_device_train_batch_size=2)
    with pytest.raises(UserError, match="^multi-turn scheduler test_tree overrides async_infer to shape the whole batch"):
        GRPOTrainer(model="/nonexistent/model", reward_funcs=lambda completions, **k: [0.0] * len(completions), args=config,
                    train_dataset=Dataset.from_list(ROWS))  # fmt: skip


def test_an_openenv_scheduler_is_refused_before_the_model_loads(tmp_path):
    from swift_cispo.rollout import OpenEnvScheduler

    class Sudoku(OpenEnvScheduler):
        pass

    multi_turns["test_sudoku"] = Sudoku
    config = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", multi_turn_scheduler="test_sudoku", num_generations=2, per_device_train_batch_size=2)
    with pytest.raises(UserError, match="^multi-turn scheduler test_sudoku is an OpenEnvScheduler, whose environments are OpenEnv servers"):
        GRPOTrainer(model="/nonexistent/model", reward_funcs=lambda completions, **k: [0.0] * len(completions), args=config,
                    train_dataset=Dataset.from_list(ROWS))  # fmt: skip


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_run_their_own_trajectories(tmp_path):
    """Each torchrun process drives its own rows' trajectories (different turn counts per process) with
    transformers' generate; the step's collectives still line up."""
    from helpers import read_metrics, swift

    out = tmp_path / "out"
    result = swift("rlhf", "--multi_turn_scheduler", "math_tip_trick", "--max_turns", "2", "--max_steps", "1",
                   "--max_completion_length", "48", "--per_device_train_batch_size", "8", "--steps_per_generation", "1",
                   "--output_dir", out, cwd=tmp_path, NPROC_PER_NODE="2")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics,) = [m for m in read_metrics(out) if "multi_turn/turns" in m]
    assert 1.0 < metrics["multi_turn/turns"] <= 2.0


# ---------------------------------------------------------------------------------------------- on the rollout server
def test_the_rollout_server_names_a_bad_trajectories_request_before_generating():
    from swift_cispo.generation.server import RolloutEngine, ServerScheduler

    plain = RolloutEngine(llm=None, model="m")  # llm unused: every check comes before generation
    with pytest.raises(UserError, match="^this rollout server runs no multi-turn scheduler; start it with --multi_turn_scheduler NAME$"):
        plain.trajectories({"rows": []})
    engine = RolloutEngine(llm=None, model="m", scheduler=ServerScheduler("math_tip_trick", max_turns=2))
    assert engine.scheduler.describe() == {"scheduler": "math_tip_trick", "max_turns": 2, "gym_env": None, "use_gym_env": False}
    with pytest.raises(UserError, match=r"needs 'rows': a list of \{'messages'"):
        engine.trajectories({"rows": [{"content": "1+1="}]})
    with pytest.raises(UserError, match="^a /trajectories request needs 'temperature'$"):
        engine.trajectories({"rows": [{"messages": [{"role": "user", "content": "1+1="}]}], "max_tokens": 8})


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--multi_turn_scheduler", "no_such"], "unknown multi-turn scheduler 'no_such'; registered: "),
        (["--multi_turn_scheduler", "thinking_tips_scheduler"], "makes one training sample per turn"),
        (["--multi_turn_scheduler", "gym_scheduler", "--gym_env", "no_env"], "unknown gym environment 'no_env'"),
        (["--max_turns", "3"], "--max_turns configures the server's multi-turn rollouts; give --multi_turn_scheduler too"),
        (["--multi_turn_scheduler", "math_tip_trick", "--max_turns", "0"], "--max_turns 0 is out of range"),
    ],
)
def test_swift_rollout_refuses_a_scheduler_it_cannot_run_before_starting_vllm(flags, message, capsys):
    import socket

    from helpers import assert_clean_error, swift_in_process

    with socket.socket() as taken:  # a check that let the flags through would stop at this busy port, not start vLLM
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = swift_in_process("rollout", "--model", DEMO_MODEL_DIR, "--port", port, *flags, capsys=capsys)
    assert_clean_error(result, message)


def test_swift_rollout_says_which_ms_swift_flags_change_nothing():
    from swift_cispo.cli.rollout import notes, parse

    said = notes(parse(["--model", "m", "--data_parallel_size", "2", "--vllm_use_async_engine", "true",
                        "--vllm_max_lora_rank", "32", "--enable_thinking", "false"]))  # fmt: skip
    assert [note.split(":")[0] for note in said] == [
        "--vllm_data_parallel_size 2", "--vllm_use_async_engine", "--vllm_max_lora_rank", "--enable_thinking",
    ]  # fmt: skip
    assert notes(parse(["--model", "m", "--multi_turn_scheduler", "math_tip_trick", "--enable_thinking", "false"])) == []
