"""Every ms-swift GRPO flag is accepted at its default, and refused with its reason otherwise (parse only, no training)."""

import sys
from pathlib import Path

import pytest

from swift_cispo.cli.msswift import catalogue
from swift_cispo.cli.rlhf import parse
from swift_cispo.errors import UserError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import msswift_examples  # noqa: E402

DEMO_MODEL = str(REPO / "swift_cispo" / "demo" / "model")


def base(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1=", "solution": "2"}\n')
    return ["--model", DEMO_MODEL, "--dataset", str(data), "--reward_funcs", "accuracy"]


def _default_tokens(value) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if value is None or value == []:
        return ["None"]
    return [("true" if v else "false") if isinstance(v, bool) else str(v) for v in values]


DECLARED = [f for f in catalogue().values() if f.status in ("refused", "not_built", "no_effect")]


def test_every_ms_swift_default_is_accepted_in_one_command_line(tmp_path):
    """A script that spells out every ms-swift default of the flags not implemented here still parses."""
    argv = [token for flag in DECLARED for token in (f"--{flag.name}", *_default_tokens(flag.msswift_default))]
    assert len(DECLARED) > 250
    parse(base(tmp_path) + argv)


@pytest.mark.parametrize("name, value, reason", [
    ("chord_mu_peak", "0.9", "CHORD"),
    ("fipo_clip_range", "0.3", "FIPO"),
    ("teacher_model", "Qwen/Qwen2.5-7B", "distillation"),
    ("quant_bits", "4", "bitsandbytes"),
    ("reward_template", "qwen", "is not built yet"),
    ("lmbda", "0.7", "GKD"),
])
def test_other_value_is_refused_naming_flag_and_reason(name, value, reason, tmp_path):
    with pytest.raises(UserError, match=rf"^--{name} {value} .*{reason}"):
        parse(base(tmp_path) + [f"--{name}", value])


def test_no_effect_flag_is_logged(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="swift_cispo")
    logging.getLogger("swift_cispo").propagate = True
    parse(base(tmp_path) + ["--model_type", "qwen2_5", "--move_model_batches", "16"])
    text = caplog.text
    assert "ms-swift flag --model_type: no effect here: the architecture is read" in text
    assert "ms-swift flag --move_model_batches: no effect here: weights are synced" in text


@pytest.mark.parametrize("warmup", [["--warmup_steps", "3"], ["--warmup_ratio", "0.1"]])
def test_warmup_with_a_constant_schedule_is_logged_not_dropped(tmp_path, caplog, warmup):
    """transformers' constant schedule has no warmup: the run says so rather than drop the flag without a word."""
    import logging

    caplog.set_level(logging.INFO, logger="swift_cispo")
    logging.getLogger("swift_cispo").propagate = True
    parse(base(tmp_path) + warmup + ["--lr_scheduler_type", "constant"])
    assert f"ms-swift flag {warmup[0]}: no effect here: --lr_scheduler_type constant has no warmup phase" in caplog.text
    caplog.clear()
    parse(base(tmp_path) + warmup + ["--lr_scheduler_type", "constant_with_warmup"])
    parse(base(tmp_path) + ["--lr_scheduler_type", "constant"])
    assert "no warmup phase" not in caplog.text


def test_evaluation_without_an_evaluation_set_is_off_as_in_ms_swift(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="swift_cispo")
    logging.getLogger("swift_cispo").propagate = True
    train = parse(base(tmp_path) + ["--eval_strategy", "steps", "--eval_steps", "1000"])[3]
    assert str(getattr(train.eval_strategy, "value", train.eval_strategy)) == "no"
    assert "there is no evaluation set (--split_dataset_ratio 0), so evaluation is off" in caplog.text
    train = parse(base(tmp_path) + ["--eval_strategy", "steps", "--split_dataset_ratio", "0.5"])[3]
    assert str(getattr(train.eval_strategy, "value", train.eval_strategy)) == "steps"


def test_ms_swift_spellings_reach_the_config(tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Think first.\n")
    _, data, _, train, _ = parse(base(tmp_path) + [
        "--warmup_ratio", "0.05", "--overlong_filter", "true", "--tau_pos", "1", "--tau_neg", "1.2",
        "--system", str(prompt), "--advantage_estimator", "rloo", "--report_to", "none", "none",
    ])
    assert train.warmup_steps == 0.05
    assert train.mask_truncated_completions is True
    assert (train.sapo_temperature_pos, train.sapo_temperature_neg) == (1.0, 1.2)
    assert data.system == "Think first."
    assert (train.scale_rewards, train.kl_in_reward) == ("none", True)  # ms-swift's rloo defaults


def test_agent_example_parses_with_its_agent_template(tmp_path):
    """ms-swift's agent.sh (--agent_template react_grpo --reward_funcs toolbench react_format) parses here."""
    argv = msswift_examples.command_lines(msswift_examples.FIXTURES / "external__agent.sh")[0]
    _, data, rlhf, _, _ = parse(msswift_examples.swap_model_and_dataset(argv, DEMO_MODEL, base(tmp_path)[3]))
    assert data.agent_template == "react_grpo" and data.stop_words == ["Observation:"]
    assert rlhf.reward_funcs == ["toolbench", "react_format"]


#: The example command lines refused at parse time on this CPU-only machine, and the reason each names.
EXPECTED_REFUSALS = {
    "internal__chord.sh": r"CHORD \(GRPO mixed with an SFT loss\) is another algorithm",
    "internal__fipo.sh": "FIPO is another algorithm",
    "internal__qlora.sh": "--quant_method bnb is not supported here",
    "internal__real.sh": "REAL is another algorithm",
    "internal__reinforce_plus_plus.sh": "needs a CUDA GPU|needs the flash_attn package",
    "internal__rloo.sh": "needs a CUDA GPU|needs the flash_attn package",
    "internal__sapo.sh": "needs a CUDA GPU|needs the flash_attn package",
    "internal__vllm_lora_qwenvl72b.sh": "needs a CUDA GPU|needs the flash_attn package",
    "multi_node__server_multi_node.sh": "invalid int value: '<node1_port>'",  # the script's placeholder; ms-swift refuses it too
    "opd_rl.sh": "on-policy distillation with a teacher model",
}


def test_every_example_command_line_parses_or_names_a_missing_feature(tmp_path):
    """None of ms-swift's 37 example command lines is refused for a flag ms-swift accepts: each parses, or is
    refused for another algorithm, missing hardware, a feature not built yet, or its own placeholder."""
    import re

    parsed = 0
    for script in sorted(msswift_examples.FIXTURES.glob("*.sh")):
        for argv in msswift_examples.command_lines(script):
            argv = msswift_examples.swap_model_and_dataset(argv, DEMO_MODEL, base(tmp_path)[3])
            expected = EXPECTED_REFUSALS.get(script.name)
            try:
                parse(argv)
            except UserError as err:
                assert expected is not None and re.search(expected, str(err)), (script.name, str(err))
                continue
            assert expected is None, (script.name, "parsed, expected a refusal")
            parsed += 1
    assert parsed == 37 - len(EXPECTED_REFUSALS) - 1  # server_multi_node.sh holds two command lines


def test_dataset_num_proc_formats_the_same_rows_and_names_a_bad_one(tmp_path):
    from swift_cispo.data import load_datasets

    good = tmp_path / "good.jsonl"
    good.write_text("".join(f'{{"prompt": "{i}+1=", "solution": "{i + 1}"}}\n' for i in range(6)))
    one = load_datasets([str(good)])
    two = load_datasets([str(good)], map_options={"num_proc": 2, "load_from_cache_file": False})
    assert one["prompt"] == two["prompt"] and one["solution"] == two["solution"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1="}\n{"prompt": "2="}\n{"prompt": "3="}\n{"prompt": ""}\n')
    with pytest.raises(UserError, match="row 4 has an empty prompt"):  # the row's place in the file, across processes
        load_datasets([str(bad)], map_options={"num_proc": 2, "load_from_cache_file": False})


def test_refusals_of_implemented_flags(tmp_path):
    for extra, fragment in (
        (["--sequence_parallel_size", "2"], "--sequence_parallel_size 2 is not built yet"),
        (["--warmup_ratio", "1.5"], r"--warmup_ratio 1.5 is out of range; allowed: in \[0, 1\)"),
        (["--warmup_ratio", "0.1", "--warmup_steps", "3"], "give --warmup_ratio or --warmup_steps, not both"),
        (["--attn_impl", "flash_attn"], "needs a CUDA GPU|needs the flash_attn package"),
        (["--stop_words", "Observation:"], "--stop_words needs vLLM rollouts"),
        (["--truncation_strategy", "right"], "invalid choice: 'right'"),
        (["--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_host", "a", "b"], "with 2 servers is not built yet"),
        (["--loss_type", "sapo", "--tau_neg", "0"], r"--sapo_temperature_neg 0.0 is out of range; allowed: > 0"),
        (["--loss_type", "real"], "REAL is another algorithm this project does not implement"),
        (["--agent_template", "react_gpro"], r"^--agent_template react_gpro is not an agent template; allowed: hermes, "),
        (["--agent_template", "qwen3_coder"], r"^--agent_template qwen3_coder is not built here"),
    ):
        with pytest.raises(UserError, match=fragment):
            parse(base(tmp_path) + extra)


def test_ms_swift_automatic_prompt_column(tmp_path):
    from swift_cispo.data import load_datasets

    numina = tmp_path / "numina.jsonl"
    numina.write_text('{"problem": "1+1=", "solution": "2"}\n')
    rows = load_datasets([str(numina)])
    assert rows["prompt"] == ["1+1="] and rows["solution"] == ["2"]
    with pytest.raises(UserError, match="neither a 'prompt' nor a 'messages' column"):
        load_datasets([str(numina)], map_options={"auto_columns": False})  # --disable_auto_column_mapping true


def test_vllm_length_beyond_the_model_context_is_one_sentence():
    from types import SimpleNamespace

    from swift_cispo.cli.model import check_context_length

    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=64))
    config = SimpleNamespace(use_vllm=True, vllm_mode="colocate", vllm_max_model_length=16384)
    with pytest.raises(UserError, match=r"--vllm_max_model_len 16384 is longer than the model's context \(max_position_embeddings 64\)"):
        check_context_length(model, config)
    check_context_length(model, SimpleNamespace(use_vllm=True, vllm_mode="colocate", vllm_max_model_length=64))
