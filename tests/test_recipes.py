"""--recipe scalerl: every ScaleRL component set at once, each printed, each overridden by its own flag."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from helpers import read_metrics, swift
from swift_cispo.cli import recipes


def _args(**overrides):
    fields = dict(loss_type="grpo", epsilon_high=None, cispo_clip_convention="offset", max_staleness=0, use_vllm=False,
                  vllm_mode="server", cast_lm_head_to_fp32=False, loss_aggregation="default", scale_rewards="group", zero_variance_filter=False,
                  no_positive_resampling=False, npr_pass_rate=0.5, thinking_budget=None, max_completion_length=14336)  # fmt: skip
    fields.update(overrides)
    return SimpleNamespace(**fields)


def test_scalerl_sets_every_component_and_prints_each():
    args = _args(use_vllm=True)
    lines = recipes.apply("scalerl", args, given=set())
    assert (args.loss_type, args.epsilon_high, args.cispo_clip_convention) == ("cispo", 5.0, "cap")
    assert args.max_staleness == 8 and args.cast_lm_head_to_fp32 and args.loss_aggregation == "prompt_mean"
    assert args.scale_rewards == "batch" and args.zero_variance_filter and args.no_positive_resampling
    assert args.npr_pass_rate == 0.9
    assert args.thinking_budget == 12288  # the paper's split of a 14,336-token budget
    assert len(lines) == len(recipes.SCALERL) and "PipelineRL-8" in lines[3]


def test_a_flag_given_wins_and_is_said_to():
    args = _args(use_vllm=True, loss_aggregation="global_token_mean")
    lines = recipes.apply("scalerl", args, given={"loss_aggregation"})
    assert args.loss_aggregation == "global_token_mean"
    assert "loss_aggregation='global_token_mean' (yours; the recipe's: prompt-level loss aggregation)" in lines


def test_settings_that_need_other_flags_say_why_they_were_not_set():
    args = _args(max_completion_length=256)
    lines = recipes.apply("scalerl", args, given=set())
    assert args.max_staleness == 0 and args.thinking_budget is None
    assert any(line.startswith("max_staleness not set: needs a rollout server (--use_vllm true --vllm_mode server)") for line in lines)
    colocate = _args(use_vllm=True, vllm_mode="colocate")
    recipes.apply("scalerl", colocate, given=set())
    assert colocate.max_staleness == 0  # no overlap to gain there
    assert any(line.startswith("thinking_budget not set: --max_completion_length is below 1024") for line in lines)


def test_the_command_line_applies_it_before_loading():
    from swift_cispo.cli.rlhf import parse

    _, _, rlhf_args, train_args, _ = parse(
        ["--recipe", "scalerl", "--use_vllm", "true", "--vllm_mode", "server", "--max_completion_length", "2048",
         "--epsilon_high", "4"]
    )  # fmt: skip
    assert rlhf_args.recipe == "scalerl"
    assert train_args.max_staleness == 8 and train_args.thinking_budget == 1755 and train_args.epsilon_high == 4.0


@pytest.mark.slow
def test_the_demo_trains_with_the_scalerl_recipe(tmp_path):
    out = tmp_path / "scalerl"
    result = swift("rlhf", "--recipe", "scalerl", "--max_steps", "4", "--logging_steps", "1", "--output_dir", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("recipe scalerl: ") == len(recipes.SCALERL)
    metrics = [m for m in read_metrics(out) if "reward" in m]  # the demo generates every other step
    assert len(metrics) == 2
    assert all("zero_variance/filtered_groups" in m and "npr/excluded_prompts" in m for m in metrics)
