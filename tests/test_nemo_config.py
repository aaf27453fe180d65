"""NeMo-RL's `loss_fn:` block in a `swift rlhf` YAML config: NeMo's meaning, NeMo's guards."""

from __future__ import annotations

import pytest

from helpers import FAST, assert_clean_error, read_metrics, swift, swift_in_process
from swift_cispo.cli.nemo import loss_fn_to_flags
from swift_cispo.errors import UserError

SEED_BLOCK = """\
loss_fn:
  use_cispo: true
  token_level_loss: true
  sequence_level_importance_ratios: false
  force_on_policy_ratio: false
  ratio_clip_min: 1.0
  ratio_clip_max: 5.0
  ratio_clip_c: null
"""


def test_the_seed_documents_block_maps_to_the_offset_convention():
    flags = loss_fn_to_flags(
        {
            "use_cispo": True, "token_level_loss": True, "sequence_level_importance_ratios": False,
            "force_on_policy_ratio": False, "ratio_clip_min": 1.0, "ratio_clip_max": 5.0, "ratio_clip_c": None,
        },
        "cfg",
    )  # fmt: skip
    assert flags == [
        "--loss_type", "cispo", "--cispo_clip_convention", "offset", "--cispo_epsilon_low", "1.0", "--epsilon_high", "5.0",
    ]  # fmt: skip


def test_importance_sampling_correction_and_ppo_mapping():
    flags = loss_fn_to_flags(
        {"use_cispo": False, "ratio_clip_min": 0.2, "ratio_clip_max": 0.28, "ratio_clip_c": 3.0,
         "use_importance_sampling_correction": True, "truncated_importance_sampling_ratio": 2.5,
         "reference_policy_kl_penalty": 0.01},
        "cfg",
    )  # fmt: skip
    assert flags == [
        "--loss_type", "dapo", "--epsilon", "0.2", "--epsilon_high", "0.28", "--dual_clip_c", "3.0",
        "--rollout_importance_sampling_mode", "token_truncate", "--rollout_importance_sampling_threshold", "2.5",
        "--beta", "0.01",
    ]  # fmt: skip
    untruncated = loss_fn_to_flags({"use_cispo": True, "use_importance_sampling_correction": True}, "cfg")
    assert untruncated[-2:] == ["--rollout_importance_sampling_threshold", "inf"]
    assert loss_fn_to_flags({"use_cispo": True, "use_importance_sampling_correction": False}, "cfg")[-1] == "none"


@pytest.mark.parametrize(
    "block,message",
    [
        ({"use_cispo": True, "sequence_level_importance_ratios": True}, "sequence_level_importance_ratios"),
        ({"use_cispo": True, "force_on_policy_ratio": True}, "force_on_policy_ratio"),
        ({"use_cispo": True, "ratio_clip_c": 3.0}, "ratio_clip_c"),
        ({"use_cispo": True, "token_level_loss": False}, "token_level_loss: true"),
        ({"use_cispo": True, "kl_input_clamp_value": 20.0}, "loss_fn keys not supported: kl_input_clamp_value"),
    ],
)
def test_nemo_guards_become_clear_errors(block, message):
    with pytest.raises(UserError, match=message):
        loss_fn_to_flags(block, "cfg")


@pytest.mark.slow
def test_seed_block_runs_as_written(tmp_path, tiny_model_dir, data_file):
    config = tmp_path / "nemo_cispo.yaml"
    config.write_text(f"model: {tiny_model_dir}\ndataset: [{data_file}]\nreward_funcs: [exact_match]\n" + SEED_BLOCK)
    out = tmp_path / "nemo_run"
    result = swift("rlhf", config, "--output_dir", out, *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # NeMo's ratio_clip_min 1.0 / ratio_clip_max 5.0 mean a weight in [0, 6]
    assert "importance weight clipped to [floor 0, 6], offset convention" in result.stderr
    steps = [m for m in read_metrics(out) if "loss" in m]
    assert steps and all("cispo/is_weight_max" in m for m in steps)


def test_unknown_loss_fn_key_fails_cleanly(tmp_path, tiny_model_dir, data_file, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(f"model: {tiny_model_dir}\ndataset: [{data_file}]\nloss_fn:\n  use_cispo: true\n  max_clamp: 3\n")
    assert_clean_error(swift_in_process("rlhf", config, capsys=capsys), "loss_fn keys not supported: max_clamp")
