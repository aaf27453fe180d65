"""The rollout window: one generation's micro-batches and the counter that walks them.

GRPO generates once per ``steps_per_generation x num_iterations`` micro-batches: the generation batch
(``per_device_train_batch_size x steps_per_generation`` local rows) is shuffled and cut into
``steps_per_generation`` slices, and each slice is trained on ``num_iterations`` times in turn
(slice ``micro_step % steps_per_generation``). The trainer owns this state (its counter, its slices,
what a checkpoint saves) instead of steering TRL's private ``_step`` / ``_buffered_inputs``; the only
TRL code it calls is the rollout itself (``_generate_and_score_completions``, the seam every GRPO fork
overrides) and TRL's public tensor-dict helpers used below.

The schedule is TRL 1.16's (``GRPOTrainer._prepare_inputs``), so a run is bit-identical to one that
TRL batches: the same rows, shuffled by the same RNG calls, in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

from trl.trainer.utils import (
    shuffle_sequence_dict,
    split_pixel_values_by_grid,
    split_tensor_dict,
    unsplit_pixel_values_by_grid,
)


@dataclass
class RolloutWindow:
    """Micro-batches of the current generation, handed out one per micro-step.

    Attributes:
        steps_per_generation: slices a generation batch is cut into.
        num_iterations: passes over each generation (mu in the GRPO paper).
        micro_step: micro-batches handed out since the run began (resumed runs restore it).
        slices: the current generation's slices; None before the first generation, or after a resume
            from a checkpoint that did not carry them (the window is then regenerated).
    """

    steps_per_generation: int
    num_iterations: int
    micro_step: int = 0
    slices: list[dict] | None = None

    @property
    def generate_every(self) -> int:
        """Micro-steps between two generations."""
        return self.steps_per_generation * self.num_iterations

    def generation_due(self) -> bool:
        """Whether the next micro-batch needs a fresh rollout."""
        return self.slices is None or self.micro_step % self.generate_every == 0

    def starts_generation(self, after: int = 0) -> bool:
        """Whether micro-step ``micro_step + after`` is the first of a generation."""
        return (self.micro_step + after) % self.generate_every == 0

    def fill(self, rollout: dict) -> None:
        """Shuffle a scored generation batch (rows stay whole) and cut it into the window's slices."""
        rollout = shuffle_sequence_dict(split_pixel_values_by_grid(rollout))
        self.slices = [unsplit_pixel_values_by_grid(part) for part in split_tensor_dict(rollout, self.steps_per_generation)]

    def take(self) -> dict:
        """The next micro-batch: a shallow copy, since a slice is trained on num_iterations times."""
        if self.slices is None:
            raise RuntimeError("the rollout window is empty: fill() it when generation_due()")
        batch = dict(self.slices[self.micro_step % self.steps_per_generation])
        self.micro_step += 1
        return batch

    def realign(self, optimizer_steps: int, gradient_accumulation_steps: int) -> bool:
        """Resume without saved slices: place the counter after ``optimizer_steps`` steps and drop the slices.

        Returns True when that point falls inside a generation window (its rest is then regenerated
        from the resumed weights, so the run is no longer bit-identical to an uninterrupted one).
        """
        self.micro_step = optimizer_steps * gradient_accumulation_steps
        self.slices = None
        return self.micro_step % self.generate_every != 0


def micro_steps_to_prefetch(
    *,
    next_micro_step: int,
    asked_until: int,
    optimizer_step: int,
    max_staleness: int,
    gradient_accumulation_steps: int,
    generate_every: int,
    total_micro_steps: int,
) -> list[int]:
    """The generations to ask for now, from the weights of ``optimizer_step``, under bounded staleness.

    A generation starts at every micro-step that is a multiple of ``generate_every``; the one starting in
    optimizer step t may be asked for from the weights of step t - max_staleness onward, and asking for it
    as early as that keeps the sampler max_staleness steps ahead (PipelineRL / NeMo-RL's bounded age). So,
    just before ``optimizer_step`` trains, every generation starting in steps optimizer_step + 1 ..
    optimizer_step + max_staleness that was not asked for yet (micro-steps from ``asked_until`` on) and
    that the run reaches (before ``total_micro_steps``) is due.
    """
    start = max(next_micro_step, asked_until)
    stop = min((optimizer_step + 1 + max_staleness) * gradient_accumulation_steps, total_micro_steps)
    first = -(-start // generate_every) * generate_every  # the first generation start at or after ``start``
    return list(range(first, stop, generate_every))
