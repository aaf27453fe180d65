"""Split invariance of the loss normalisation, through the real training pipeline.

The invariant: the gradient of ONE optimizer step over a given global batch is the same whether it
is computed in 1 process or 2 (``torchrun``, gloo, DDP gradient averaging), in 1 or several
micro-batches (gradient accumulation, GA), and for any ``steps_per_generation`` (SPG), a multiple
of GA or below it. This is what catches the bugs peers shipped: TRL mis-scaling DAPO/CISPO when
SPG != GA, ms-swift dividing by GA twice, open-instruct normalising per micro-batch.

How (see ``tests/split_invariance_worker.py`` for the details):

- A tiny random Qwen2 (the demo's shape) is saved in float64 once; every process of every run loads
  the same weights, so all ranks start identical.
- The worker subclasses ``swift_cispo.GRPOTrainer`` and replaces only
  ``_generate_and_score_completions`` with a fixed rollout: 16 "step" rows S (prompt length 4, some
  left-padded; completion length 6 with UNEQUAL lengths 1..6; advantages of both signs;
  ``old_per_token_logps`` = the model's log-probs minus noise, so importance ratios ``exp(noise)``
  are far from 1: 13 of the 62 tokens exceed the CISPO cap 2.0 and 19 are PPO-clipped) plus short
  "filler" rows. Everything else -- TRL's ``_prepare_inputs`` (shuffle + split into SPG slices),
  ``swift_cispo``'s window token annotation, ``_compute_loss``, the reductions, TRL/transformers'
  gradient accumulation and DDP -- is the real pipeline.
- Each run trains exactly one step: SGD, lr 1, no clipping, no weight decay, constant schedule,
  beta 0, so ``param_after - param_before = -grad``.
- The rows are laid out so that the first optimizer step always consumes exactly S, whatever the
  split: each rank holds a contiguous share of S (``16 / (W * GA)`` rows per micro-batch), and
  when SPG > GA the generation batch's extra slices (consumed only by later, never-run optimizer
  steps) are filler rows, whose lengths (1-2 tokens) differ from S's, so a normaliser that counts
  them is caught. ``num_items_in_batch`` is the global token count of the whole generation batch,
  filler included, as TRL computes it.
- TRL shuffles a rank's generation batch before splitting it into SPG slices. With SPG == GA the
  whole generation batch is the first optimizer step, so the shuffle only reorders rows within it and
  stays on. With SPG > GA it would decide which rows land in the first window, so those runs replace
  ``trl.trainer.grpo_trainer.shuffle_sequence_dict`` by the identity (``shuffle: False``).
- Every configuration is compared with the 1-process, 1-micro-batch run (``ref``) on the same rows S:
  ``||g - g_ref|| / ||g_ref|| < 1e-5``.

Precision: the model is float64, but TRL 1.16's fused LM head (``trl.kernels.chunked_logprob``,
which ``_get_per_token_logps_and_entropies`` always uses) computes the log-probs and their gradient
in float32, so identical math in different batch shapes agrees to ~1e-8..1e-7, not ~1e-12. Failures
(a wrong token count) give errors >= 1e-3, four orders of magnitude above the tolerance.

What is and is not invariant:

- ``cispo``, ``dapo`` (``global_token_mean``): invariant in every configuration, SPG < GA included.
- ``cispo@prompt_mean`` (``loss_aggregation="prompt_mean"``): invariant too: each row's group token
  weight is computed over the gathered generation batch before it is split, and the step's total
  weight is summed over all ranks and micro-batches.
- ``grpo`` (``sequence_mean``), ``dr_grpo`` (``constant_length``): invariant because every
  micro-batch holds the same number of sequences.
- ``bnpo`` (``batch_token_mean``) divides by the LOCAL micro-batch's token count: that is its
  definition (TRL's meaning), not a bug, so its gradient depends on the split; a test shows it.
- Negative control: ``cispo@microbatch_norm`` swaps ``global_token_mean`` for a per-micro-batch token
  mean (open-instruct's bug). It equals the reference when there is one micro-batch in one process,
  and must differ by > 1e-3 otherwise: the test can fail.
- SPG < GA (an optimizer step spans several generation batches): the trainer prepares every
  micro-batch of the optimizer step before its first backward (``GRPOTrainer.get_batch_samples``),
  so the step's token count is exact there too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO, free_port

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.heavy]  # one fixture: 3 launches, 2 under torchrun (3 min)

WORKER = REPO / "tests" / "split_invariance_worker.py"
TOLERANCE = 1e-5
NEGATIVE_MIN_ERROR = 1e-3
STEP_TOKENS = 62  # completion tokens of the 16 step rows (see the worker's STEP_LENGTHS)

ALL = ["cispo", "dapo", "grpo", "dr_grpo", "bnpo"]
INVARIANT = ["cispo", "dapo", "grpo", "dr_grpo"]
GLOBAL_TOKEN_MEAN = ("cispo", "dapo")
PROMPT_MEAN = "cispo@prompt_mean"  # ScaleRL's prompt-level aggregation, split-invariant by construction

# name -> (world size, GA, SPG, shuffle, losses)
CONFIGS: dict[str, tuple[int, int, int, bool, list[str]]] = {
    "ref": (1, 1, 1, True, [*ALL, "cispo@microbatch_norm", PROMPT_MEAN]),
    "ga2": (1, 2, 2, True, [*ALL, "cispo@microbatch_norm", "dapo@microbatch_norm", PROMPT_MEAN]),
    "ga4": (1, 4, 4, True, ALL),
    "spg2_ga1": (1, 1, 2, False, [*INVARIANT, PROMPT_MEAN]),
    "spg4_ga1": (1, 1, 4, False, INVARIANT),
    "spg4_ga2": (1, 2, 4, False, INVARIANT),
    "spg1_ga2": (1, 2, 1, True, INVARIANT),  # SPG < GA: the step spans two generation batches
    "w2_ga1": (2, 1, 1, True, [*ALL, "cispo@microbatch_norm", PROMPT_MEAN]),
    "w2_ga2": (2, 2, 2, True, ALL),
    "w2_ga4": (2, 4, 4, True, INVARIANT),
    "w2_spg2_ga1": (2, 1, 2, False, [*INVARIANT, PROMPT_MEAN]),
    "w2_spg4_ga2": (2, 2, 4, False, INVARIANT),
    "w2_spg1_ga2": (2, 2, 1, True, [*INVARIANT, PROMPT_MEAN]),  # SPG < GA: the step spans two generation batches
}


# DeepSpeed ZeRO (issue: 1 and 2 processes take the same first step). ZeRO has no float64, so these
# runs and their 1-process reference are float32: name -> (world size, GA, deepspeed config).
ZERO_LOSSES = ["cispo", "grpo"]
ZERO_CONFIGS: dict[str, tuple[int, int, str | None]] = {
    "f32_ref": (1, 1, None),
    "w2_zero2": (2, 1, "zero2"),
    "w2_zero2_ga2": (2, 2, "zero2"),
    "w2_zero3": (2, 1, "zero3"),
    "w2_zero3_ga2": (2, 2, "zero3"),
}


def _zero_runs(world: int) -> list[dict]:
    return [
        {"name": name, "ga": ga, "spg": ga, "shuffle": True, "losses": ZERO_LOSSES, "dtype": "float32", "deepspeed": ds}
        for name, (w, ga, ds) in ZERO_CONFIGS.items()
        if w == world
    ]


def _launch_runs(world: int) -> list[dict]:
    return [
        {"name": name, "ga": ga, "spg": spg, "shuffle": shuffle, "losses": losses}
        for name, (w, ga, spg, shuffle, losses) in CONFIGS.items()
        if w == world
    ]


def _launch(world: int, model_dir: Path, out: Path, runs: list[dict] | None = None) -> None:
    runs = _launch_runs(world) if runs is None else runs
    args = ["--model", str(model_dir), "--out", str(out), "--runs", json.dumps(runs)]
    if world == 1:
        cmd = [sys.executable, str(WORKER), *args]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run",
            "--nproc_per_node", str(world), "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            str(WORKER), *args,
        ]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"worker (world {world}) failed with code {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("split_invariance")
    from swift_cispo.demo.tiny import save_random_model

    model_dir = save_random_model(root / "model", dtype=torch.float64)  # conftest's tiny model, in float64
    out = root / "out"
    _launch(1, model_dir, out, [*_launch_runs(1), *_zero_runs(1)])
    _launch(2, model_dir, out)
    _launch(2, model_dir, out, _zero_runs(2))  # its own processes: DeepSpeed's global state stays out of the others
    loaded = {p.stem: torch.load(p, weights_only=False) for p in out.glob("*.pt")}
    expected = {f"{name}__{loss}" for name, (*_, losses) in CONFIGS.items() for loss in losses} | {"meta"}
    expected |= {f"{name}__{loss}" for name in ZERO_CONFIGS for loss in ZERO_LOSSES}
    assert expected <= set(loaded), sorted(expected - set(loaded))
    return loaded


def _flat(result: dict) -> torch.Tensor:
    delta = result["delta"]
    return torch.cat([delta[name].flatten() for name in sorted(delta)])


def relative_error(results: dict, config: str, loss: str, reference: str = "ref", reference_loss: str | None = None) -> float:
    g = _flat(results[f"{config}__{loss}"])
    g_ref = _flat(results[f"{reference}__{reference_loss or loss}"])
    return float((g - g_ref).norm() / g_ref.norm())


def test_the_rollout_exercises_what_it_should(results):
    meta = results["meta"]
    assert meta["step_tokens"] == STEP_TOKENS
    assert meta["cispo_capped_tokens"] > 0, "no ratio above the CISPO cap: the cap is not exercised"
    assert meta["ppo_clipped_tokens"] > 0, "no PPO-clipped token: the clip is not exercised"
    assert meta["positive_advantages"] > 0 and meta["negative_advantages"] > 0
    for loss in ALL:
        assert _flat(results[f"ref__{loss}"]).norm() > 1e-3, f"{loss}: the step does not move the parameters"
    assert results["w2_ga1__cispo"]["world"] == 2  # the torchrun runs really had two processes


def _cases():
    for name, (world, ga, spg, _, losses) in CONFIGS.items():
        if name == "ref":
            continue
        for loss in losses:
            if loss not in INVARIANT and loss != PROMPT_MEAN:
                continue
            yield pytest.param(name, loss, id=f"{name}-{loss}")


@pytest.mark.parametrize("config,loss", list(_cases()))
def test_gradient_is_split_invariant(results, config, loss):
    error = relative_error(results, config, loss)
    result = results[f"{config}__{loss}"]
    assert error < TOLERANCE, (
        f"{config} / {loss}: relative gradient error {error:.3e} vs the 1-process 1-micro-batch step; "
        f"window_num_tokens seen by rank 0's micro-batches: {result['window_counts']} (expected {STEP_TOKENS})"
    )


@pytest.mark.parametrize(
    "config", list(CONFIGS)
)
def test_window_token_count_is_the_global_step_count(results, config):
    """In every configuration, SPG < GA included, every micro-batch carries the step's global token count."""
    for loss in GLOBAL_TOKEN_MEAN:
        assert results[f"{config}__{loss}"]["window_counts"] == [float(STEP_TOKENS)] * CONFIGS[config][1]


@pytest.mark.parametrize("config", ["ga2", "ga4", "w2_ga1", "w2_ga2"])
def test_bnpo_is_not_split_invariant_by_definition(results, config):
    """bnpo normalises by the LOCAL micro-batch's token count (TRL's definition of batch_token_mean), so
    with unequal completion lengths its gradient depends on how the batch is split. Not a bug."""
    assert relative_error(results, config, "bnpo") > NEGATIVE_MIN_ERROR


def test_prompt_mean_is_another_objective_than_the_token_mean(results):
    """The rows' groups have unequal token counts, so weighting prompts equally moves the gradient."""
    assert relative_error(results, "ref", PROMPT_MEAN, reference_loss="cispo") > NEGATIVE_MIN_ERROR


def test_negative_control_matches_reference_without_a_split(results):
    """Per-micro-batch normalisation is the same objective when there is a single micro-batch in one process:
    the control differs from the real loss only through the split."""
    assert relative_error(results, "ref", "cispo@microbatch_norm", reference_loss="cispo") < TOLERANCE


@pytest.mark.parametrize(
    "config,loss", [("ga2", "cispo@microbatch_norm"), ("ga2", "dapo@microbatch_norm"), ("w2_ga1", "cispo@microbatch_norm")]
)
def test_negative_control_per_microbatch_normalisation_is_caught(results, config, loss):
    """The test can fail: normalising each micro-batch (or rank) by its own token count moves the gradient."""
    reference_loss = loss.split("@")[0]
    assert relative_error(results, config, loss, reference_loss=reference_loss) > NEGATIVE_MIN_ERROR


@pytest.mark.parametrize("config", [name for name in ZERO_CONFIGS if name != "f32_ref"])
@pytest.mark.parametrize("loss", ZERO_LOSSES)
def test_zero_two_processes_take_the_one_process_step(results, config, loss):
    """DeepSpeed ZeRO-2/3 with 2 processes (gloo) and the same rollout: the first optimizer step's update
    equals the 1-process float32 one (SGD, lr 1: the update is -grad) to relative 1e-5."""
    assert results[f"{config}__{loss}"]["world"] == 2
    error = relative_error(results, config, loss, reference="f32_ref")
    assert error < TOLERANCE, f"{config} / {loss}: relative update error {error:.3e} vs 1 process"


def test_zero_reference_is_float32_and_moves(results):
    delta = results["f32_ref__cispo"]["delta"]
    assert all(d.dtype == torch.float32 for d in delta.values())
    assert _flat(results["f32_ref__cispo"]).norm() > 1e-3
    # float32 and float64 steps agree only to float32 precision: the comparison above is float32 against float32
    assert 0 < relative_error(results, "f32_ref", "cispo") < 1e-4
