"""Worker for ``tests/test_split_invariance.py``: one real optimizer step of ``swift_cispo.GRPOTrainer``
on a fixed, deterministic rollout, for several (batch split, loss) runs in one process launch.

Run it as ``python tests/split_invariance_worker.py --model DIR --out DIR --runs JSON`` (1 process) or
under ``torchrun --nproc_per_node 2`` (2 processes, gloo). ``--runs`` is a JSON list of objects:

    {"name": str, "ga": int, "spg": int, "shuffle": bool, "losses": [str, ...]}

A loss name is a registered ``loss_type``, optionally followed by ``@microbatch_norm`` (the negative
control: ``global_token_mean`` replaced by a per-micro-batch token mean, open-instruct's bug) or
``@prompt_mean`` (``loss_aggregation="prompt_mean"``, ScaleRL's prompt-level aggregation; a group is
``num_generations`` = 2 consecutive rows of the gathered generation batch).

For every run and loss, rank 0 writes ``OUT/<name>__<loss>.pt``: a dict with ``delta``
(``{parameter name: param_after - param_before}`` of ONE SGD step -- lr 1, no clipping, no weight
decay -- i.e. ``-grad`` of that optimizer step), ``world``, ``rows_seen`` (rank 0's pool rows per
generation round) and ``window_counts`` (the ``window_num_tokens`` each of rank 0's micro-batches
carried into ``_compute_loss``); and ``OUT/meta.pt`` describing the fixed rollout.

The model is float64, but TRL 1.16's fused LM head computes log-probs in float32, so identical
math in different batch shapes agrees to ~1e-7 relative, not ~1e-12.

The rollout (see ``fixed_rows``): a pool of rows with prompt length 4 and completion length 6.
Rows ``0..15`` ("S", the step rows) have unequal completion lengths (1 to 6 tokens); the remaining
"filler" rows are all short (1 to 2 tokens), so any normaliser that counts a filler row, or counts
one micro-batch / one rank only, gives a different gradient. ``old_per_token_logps`` are the
model's own log-probs at the start minus Gaussian noise (std 0.8), so importance ratios are
``exp(noise)``: some exceed the CISPO cap (2.0) and many leave the PPO clip range [0.8, 1.28].

How the rows are laid out so that the FIRST optimizer step always covers exactly the rows S,
whatever the split (W ranks, per-device batch B = 16 / (W * GA), GA, SPG):

- on rank ``r`` the ``m``-th micro-batch of the step (``m = 0..GA-1``) is
  ``S[r*GA*B + m*B : r*GA*B + (m+1)*B]`` -- each rank holds a contiguous share of S;
- TRL generates once every SPG micro-batches and splits the rank's generation batch (B * SPG rows)
  into SPG contiguous slices; slice ``s`` of generation round ``k`` is micro-batch ``m = k*SPG + s``.
  If ``m < GA`` it is filled with the S rows above; otherwise (only when SPG > GA: slices consumed
  by later optimizer steps, which ``max_steps=1`` never runs) with filler rows.
- ``num_items_in_batch`` is the GLOBAL completion-token count of that round's generation batch
  (all ranks, filler included), exactly what TRL's ``_generate_and_score_completions`` returns.

TRL's ``_prepare_inputs`` shuffles the rank's generation batch before splitting it into SPG slices.
When SPG == GA (or SPG < GA) every slice of the round belongs to the first optimizer step, so the
shuffle only reorders rows inside the step and the runs keep it (``"shuffle": true``). When
SPG > GA the shuffle decides which rows land in the first window, so those runs set
``"shuffle": false``, which replaces ``trl.trainer.grpo_trainer.shuffle_sequence_dict`` with the
identity for the duration of that run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

STEP_ROWS = 16
PROMPT_LEN = 4
COMPLETION_LEN = 6
NUM_FILLER = 48
STEP_LENGTHS = [6, 1, 3, 6, 2, 5, 4, 6, 1, 2, 6, 3, 5, 6, 2, 4]  # sum 62; halves 33 / 29; quarters 16/17/12/17
PROMPT_PAD = [0, 1, 0, 2, 0, 0, 1, 0, 0, 0, 2, 0, 1, 0, 0, 0]  # left padding of the step rows' prompts
NOISE_STD = 0.8
CISPO_CAP = 2.0
PPO_EPSILON, PPO_EPSILON_HIGH = 0.2, 0.28
PAD_ID = 0


def fixed_rows(model) -> dict[str, torch.Tensor]:
    """The whole pool (16 step rows then 48 filler rows), identical in every process and configuration."""
    n = STEP_ROWS + NUM_FILLER
    g = torch.Generator().manual_seed(1234)
    prompt_ids = torch.randint(3, 259, (n, PROMPT_LEN), generator=g)
    completion_ids = torch.randint(3, 259, (n, COMPLETION_LEN), generator=g)
    filler_lengths = torch.randint(1, 3, (NUM_FILLER,), generator=g)
    lengths = torch.cat([torch.tensor(STEP_LENGTHS), filler_lengths])
    prompt_pad = torch.cat([torch.tensor(PROMPT_PAD), torch.zeros(NUM_FILLER, dtype=torch.long)])
    positions = torch.arange(PROMPT_LEN)
    prompt_mask = (positions.unsqueeze(0) >= prompt_pad.unsqueeze(1)).long()
    prompt_ids = prompt_ids.masked_fill(prompt_mask == 0, PAD_ID)
    completion_mask = (torch.arange(COMPLETION_LEN).unsqueeze(0) < lengths.unsqueeze(1)).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, PAD_ID)
    advantages = torch.randn(n, generator=g, dtype=torch.float64)
    advantages = advantages + 0.3 * advantages.sign()  # mixed signs, none near zero
    noise = NOISE_STD * torch.randn(n, COMPLETION_LEN, generator=g, dtype=torch.float64)

    # log pi_theta at the initial parameters, computed once on the whole pool (one fixed-shape forward)
    with torch.no_grad():
        ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attn = torch.cat([prompt_mask, completion_mask], dim=1)
        logits = model(input_ids=ids, attention_mask=attn).logits[:, PROMPT_LEN - 1 : -1].to(torch.float64)
        logps = torch.log_softmax(logits, dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    # ratio pi_theta / pi_old = exp(noise) at the start of the step
    old_logps = torch.where(completion_mask.bool(), logps - noise, torch.zeros_like(logps))
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "old_per_token_logps": old_logps,
        "noise": noise,
    }


def round_rows(round_index: int, rank: int, world: int, ga: int, spg: int) -> tuple[list[int], list[int]]:
    """Pool row indices of generation round ``round_index``: (this rank's rows in order, all ranks' rows)."""
    batch = STEP_ROWS // (world * ga)

    def rank_rows(r: int) -> list[int]:
        rows = []
        for s in range(spg):
            m = round_index * spg + s  # micro-batch index counted from the start of training
            if m < ga:  # first optimizer step: this rank's contiguous share of S
                start = r * ga * batch + m * batch
                rows += list(range(start, start + batch))
            else:  # a later optimizer step (never run): short filler rows
                f = ((m - ga) * world + r) * batch
                if f + batch > NUM_FILLER:
                    raise ValueError("not enough filler rows for this configuration")
                rows += [STEP_ROWS + f + j for j in range(batch)]
        return rows

    return rank_rows(rank), [i for r in range(world) for i in rank_rows(r)]


@contextlib.contextmanager
def patched(target, name, value, enabled=True):
    if not enabled:
        yield
        return
    original = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, original)


@contextlib.contextmanager
def microbatch_norm(enabled: bool):
    """Negative control: normalise global_token_mean by the micro-batch's own token count (open-instruct's bug)."""
    if not enabled:
        yield
        return
    from swift_cispo.losses import reduction

    original = reduction.REDUCTIONS["global_token_mean"]
    reduction.REDUCTIONS["global_token_mean"] = reduction.batch_token_mean
    try:
        yield
    finally:
        reduction.REDUCTIONS["global_token_mean"] = original


@contextlib.contextmanager
def gathered(model, enabled: bool):
    """ZeRO-3 keeps 1/W of each parameter per rank: gather the full tensors to read them."""
    if not enabled:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        yield


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--runs", required=True, help="JSON list of runs")
    args = parser.parse_args()
    runs = json.loads(args.runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from swift_cispo.trainers import rollout_window  # the trainer shuffles each generation batch here
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from swift_cispo import GRPOConfig, GRPOTrainer

    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def load_model(dtype=torch.float64):
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
        model.to(dtype)  # (a no-op under ZeRO-3, whose partitions are created in the loaded dtype)
        return model

    pool = fixed_rows(load_model().eval())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))

    class FixedRolloutTrainer(GRPOTrainer):
        """Returns this rank's share of the fixed rollout instead of generating."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self._round = 0
            self.rows_seen: list[list[int]] = []
            self.window_counts: list[float | None] = []

        def _compute_loss(self, model, inputs):
            # record what the trainer annotated, to name the culprit when a gradient differs
            count = inputs.get("window_num_tokens")
            self.window_counts.append(None if count is None else float(count))
            return super()._compute_loss(model, inputs)

        def _generate_and_score_completions(self, inputs):
            world_size = self.accelerator.num_processes
            local, everyone = round_rows(
                self._round, self.accelerator.process_index, world_size,
                self.args.gradient_accumulation_steps, self.args.steps_per_generation,
            )
            self._round += 1
            self.rows_seen.append(local)
            assert len(local) == self.args.per_device_train_batch_size * self.args.steps_per_generation
            idx = torch.tensor(local)
            device = self.accelerator.device
            return {
                "prompt_ids": pool["prompt_ids"][idx].to(device),
                "prompt_mask": pool["prompt_mask"][idx].to(device),
                "completion_ids": pool["completion_ids"][idx].to(device),
                "completion_mask": pool["completion_mask"][idx].to(device),
                "advantages": pool["advantages"][idx].to(device),
                "num_items_in_batch": pool["completion_mask"][torch.tensor(everyone)].sum().to(torch.float64).to(device),
                "old_per_token_logps": pool["old_per_token_logps"][idx].to(device),
            }

    dataset = Dataset.from_dict({"prompt": [f"{i}+{i}=" for i in range(64)]})

    def reward(completions, **kwargs):  # unused: the fixed rollout carries its own advantages
        return [0.0 for _ in completions]

    with tempfile.TemporaryDirectory() as scratch:
        for run in runs:
            ga, spg = int(run["ga"]), int(run["spg"])
            if STEP_ROWS % (world * ga):
                raise ValueError(f"{STEP_ROWS} step rows cannot be split over {world} ranks x GA {ga}")
            batch = STEP_ROWS // (world * ga)
            dtype = getattr(torch, run.get("dtype", "float64"))
            deepspeed = run.get("deepspeed")  # a built-in config name: DeepSpeed ZeRO (float32: ZeRO has no float64)
            for loss_name in run["losses"]:
                loss_type, _, variant = loss_name.partition("@")
                model = load_model(dtype)
                before = {n: p.detach().clone() for n, p in model.named_parameters()}
                config = GRPOConfig(
                    deepspeed=deepspeed,
                    output_dir=os.path.join(scratch, f"{run['name']}_{loss_name}"),
                    per_device_train_batch_size=batch,
                    gradient_accumulation_steps=ga,
                    steps_per_generation=spg,
                    num_generations=2,
                    max_completion_length=COMPLETION_LEN,
                    loss_type=loss_type,
                    loss_aggregation="prompt_mean" if variant == "prompt_mean" else "default",
                    epsilon=PPO_EPSILON,
                    epsilon_high=CISPO_CAP if loss_type == "cispo" else PPO_EPSILON_HIGH,
                    beta=0.0,
                    optim="sgd",
                    learning_rate=1.0,
                    max_grad_norm=0.0,
                    weight_decay=0.0,
                    lr_scheduler_type="constant",
                    warmup_steps=0,
                    max_steps=1,
                    use_cpu=True,
                    bf16=False,
                    fp16=False,
                    report_to="none",
                    save_strategy="no",
                    gradient_checkpointing=False,
                    logging_steps=1,
                    disable_tqdm=True,
                    seed=0,
                )
                if deepspeed == "zero3":  # its model must be built after the config, partitioned by zero.Init
                    del model
                    model = load_model(dtype)
                trainer = FixedRolloutTrainer(
                    model=model,
                    reward_funcs=reward,
                    args=config,
                    train_dataset=dataset,
                    processing_class=tokenizer,
                )
                with (
                    patched(rollout_window, "shuffle_sequence_dict", lambda d: d, enabled=not run.get("shuffle", True)),
                    microbatch_norm(variant == "microbatch_norm"),
                ):
                    trainer.train()
                if variant not in ("", "microbatch_norm", "prompt_mean"):
                    raise ValueError(f"unknown variant {variant!r}")
                assert trainer.state.global_step == 1
                expected_rounds = -(-ga // spg)  # ceil: SPG < GA needs GA / SPG generation rounds
                assert trainer._round == expected_rounds, (trainer._round, expected_rounds)
                unwrapped = trainer.accelerator.unwrap_model(trainer.model)
                with gathered(unwrapped, enabled=deepspeed == "zero3"):
                    delta = {n: (p.detach() - before[n]) for n, p in unwrapped.named_parameters()}
                assert all(d.dtype == dtype for d in delta.values())
                if rank == 0:
                    torch.save(
                        {
                            "delta": delta,
                            "world": world,
                            "rows_seen": trainer.rows_seen,
                            "window_counts": trainer.window_counts,
                        },
                        out / f"{run['name']}__{loss_name}.pt",
                    )
                trainer.accelerator.wait_for_everyone()
                del trainer, model
                if deepspeed:  # forget the config transformers keeps globally (ZeRO-3 would partition the next load)
                    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

                    unset_hf_deepspeed_config()

    if rank == 0:
        mask = pool["completion_mask"][:STEP_ROWS].bool()
        ratio = torch.exp(pool["noise"][:STEP_ROWS])
        adv = pool["advantages"][:STEP_ROWS].unsqueeze(1)
        ppo_clipped = ((ratio > 1 + PPO_EPSILON_HIGH) & (adv > 0)) | ((ratio < 1 - PPO_EPSILON) & (adv < 0))
        torch.save(
            {
                "step_tokens": int(mask.sum()),
                "cispo_capped_tokens": int(((ratio > CISPO_CAP) & mask).sum()),
                "ppo_clipped_tokens": int((ppo_clipped & mask).sum()),
                "positive_advantages": int((adv > 0).sum()),
                "negative_advantages": int((adv < 0).sum()),
            },
            out / "meta.pt",
        )


if __name__ == "__main__":
    sys.exit(main())
