"""No-Positive-Resampling (ScaleRL, arXiv 2510.13786; Polaris): prompts the policy already solves leave the data.

A prompt whose group of completions reached a pass rate of ``npr_pass_rate`` (0.9 in ScaleRL) in any
training rollout is not sampled in later epochs: its groups would be (nearly) flat and teach nothing.
A completion *passes* when its reward (TRL's weighted sum over reward functions) is at least
``npr_pass_reward``.

How it fits TRL's data order: the train sampler is TRL's ``RepeatSampler`` with one change, made at each
epoch's start: the permutation it draws (the same random draw as TRL's, so the run is TRL's until a
prompt is excluded) skips the excluded prompts and is cycled to keep the epoch's length, so the
trainer's step counting and the dataloader's resume skipping stay as they are. Each epoch freezes the
excluded set it starts with; the sets per epoch are saved in checkpoints, so a resumed run replays its
epoch's order exactly (tests/test_resampling.py).

Prompts are identified by their content (a digest of the prompt), so duplicates of a solved prompt
leave too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch
from trl.trainer.utils import RepeatSampler

from ..errors import UserError

#: Checkpoint file of the exclusion history (process 0 writes it; every process holds the same).
NPR_STATE = "no_positive_resampling.json"


def prompt_key(prompt) -> str:
    """A short, stable identity of a prompt (text or chat messages)."""
    text = json.dumps(prompt, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


def group_pass_rates(rewards: torch.Tensor, num_generations: int, pass_reward: float) -> torch.Tensor:
    """Each group's fraction of completions whose reward is at least ``pass_reward`` (NaN rewards fail)."""
    passed = (rewards >= pass_reward) & ~torch.isnan(rewards)
    return passed.double().view(-1, num_generations).mean(dim=1)


@dataclass
class NoPositiveResampling:
    """The exclusion history: when each prompt was excluded, and the set each epoch started with."""

    pass_rate: float = 0.9
    pass_reward: float = 1.0
    excluded: dict[str, int] = field(default_factory=dict)  # prompt key -> optimizer step it was excluded at
    epochs: dict[int, list[str]] = field(default_factory=dict)  # epoch -> the keys excluded when it began

    def record(self, keys: list[str], pass_rates: torch.Tensor, step: int) -> int:
        """Exclude the groups' prompts that reached the pass rate; returns how many were new."""
        new = 0
        for key, rate in zip(keys, pass_rates.tolist()):
            if rate >= self.pass_rate - 1e-6 and key not in self.excluded:  # 9/10 >= 0.9 in any float precision
                self.excluded[key] = step
                new += 1
        return new

    def excluded_in_epoch(self, epoch: int) -> frozenset[str]:
        """The set epoch ``epoch`` samples without: frozen at its first call (a resumed run finds it saved)."""
        if epoch not in self.epochs:
            self.epochs[epoch] = sorted(self.excluded)
        return frozenset(self.epochs[epoch])

    def state_dict(self) -> dict:
        return {"pass_rate": self.pass_rate, "pass_reward": self.pass_reward, "excluded": self.excluded,
                "epochs": {str(k): v for k, v in self.epochs.items()}}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.excluded = {str(k): int(v) for k, v in state["excluded"].items()}
        self.epochs = {int(k): list(v) for k, v in state["epochs"].items()}


class EpochSampler(RepeatSampler):
    """TRL's ``RepeatSampler`` that knows its epoch, and whose epochs skip the prompts No-Positive-Resampling excluded.

    TRL's draws each epoch's permutation from one generator seeded once, so a run resumed in epoch
    e > 0 (a new generator) drew epoch 0's order again: measured, steps 7-10 of a resumed 10-step run
    trained other prompts than the uninterrupted run. transformers calls :meth:`set_epoch` before every
    epoch; it re-seeds and advances the generator to epoch e's draw, so the order is TRL's in an
    uninterrupted run and the same after a resume.
    """

    def __init__(self, *args, keys: list[str] | None = None, history: NoPositiveResampling | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.keys, self.history = keys, history
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.shuffle and self.seed is not None:
            self.generator.manual_seed(self.seed)
            for _ in range(epoch):  # one permutation per epoch, as TRL's sampler draws them
                torch.randperm(self.num_samples, generator=self.generator)

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=self.generator).tolist()
        else:
            order = list(range(self.num_samples))
        excluded = self.history.excluded_in_epoch(self.epoch) if self.history is not None else frozenset()
        self.epoch += 1  # the next epoch's, should nobody call set_epoch
        kept = [i for i in order if self.keys[i] not in excluded] if excluded else order
        if not kept:
            raise UserError(
                f"no_positive_resampling: all {self.num_samples} training prompts reached a pass rate of "
                f"{self.history.pass_rate:g}, so none is left to sample; stop earlier (--max_steps), give harder prompts, "
                "or raise --npr_pass_rate"
            )
        order = (kept * (len(order) // len(kept) + 1))[: len(order)]  # the epoch keeps its length
        whole = len(order) - len(order) % self.batch_size  # a last, partial batch of prompts is left out, as in TRL
        for start in range(0, whole, self.batch_size):
            prompts = order[start : start + self.batch_size]
            for _ in range(self.repeat_count):  # the generation batch is reused steps_per_generation x num_iterations times
                yield from (index for index in prompts for _ in range(self.mini_repeat_count))
