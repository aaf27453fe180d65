"""Reductions: how a per-token loss becomes the scalar that one micro-batch back-propagates.

Every reduction is written so that the *optimizer step* sees the objective it names, given that
(a) the trainer accumulates gradients over ``gradient_accumulation_steps`` micro-batches and
(b) DDP / DeepSpeed *average* gradients over ``num_processes`` ranks.

- ``sequence_mean`` (grpo): mean over sequences of each sequence's token mean.
- ``batch_token_mean`` (bnpo): token mean over the local micro-batch.
- ``constant_length`` (dr_grpo): token sum divided by ``B * max_completion_length``.
- ``global_token_mean`` (dapo, cispo): token sum divided by the number of completion tokens in the
  whole optimizer step (all ranks, all accumulated micro-batches): MiniMax-M1 Eq. 4's
  ``1 / sum_i |o_i|``. Because the count is global, this one is the same whatever the split.
- ``prompt_mean`` (ScaleRL's prompt-level aggregation): each prompt's tokens averaged over its whole
  group of completions, then the mean over the step's prompts. A token of prompt p weighs
  ``1 / T_p`` (``T_p``: the completion tokens of p's group, counted over all ranks before the batch
  is split); the step divides by the sum of those weights over all its tokens (all ranks, all
  micro-batches), which is the number of prompts when whole groups are in the step. Split-invariant
  like ``global_token_mean``.

The first three reproduce TRL 1.16's arithmetic operation for operation (and so its gradients).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class ReductionContext:
    """What a reduction needs to know about how the batch is split.

    Attributes:
        num_processes: data-parallel ranks whose gradients are averaged.
        gradient_accumulation_steps: micro-batches accumulated into one optimizer step (1 in eval).
        max_completion_length: the constant of ``constant_length``.
        window_num_tokens: completion tokens in the whole optimizer step, summed over ranks and
            micro-batches (a 0-d tensor), for ``global_token_mean``.
        token_weight: ``(B,)``, each row's per-token weight ``1 / T_p`` for ``prompt_mean``.
        window_weight: the sum of ``token_weight`` over every loss token of the optimizer step (a 0-d
            tensor, all ranks and micro-batches), for ``prompt_mean``.
    """

    num_processes: int = 1
    gradient_accumulation_steps: int = 1
    max_completion_length: int = 1
    window_num_tokens: torch.Tensor | None = None
    token_weight: torch.Tensor | None = None
    window_weight: torch.Tensor | None = None


def masked(per_token_loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the loss outside the completion, without letting a non-finite padded value leak as NaN."""
    per_token_loss = per_token_loss.expand_as(mask) if per_token_loss.shape != mask.shape else per_token_loss
    return torch.where(mask.bool(), per_token_loss, torch.zeros_like(per_token_loss))


def sequence_mean(per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: ReductionContext) -> torch.Tensor:
    per_sequence = masked(per_token_loss, mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_sequence.mean() / ctx.gradient_accumulation_steps


def batch_token_mean(per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: ReductionContext) -> torch.Tensor:
    return masked(per_token_loss, mask).sum() / mask.sum().clamp(min=1.0) / ctx.gradient_accumulation_steps


def constant_length(per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: ReductionContext) -> torch.Tensor:
    batch_size = mask.size(0)
    return masked(per_token_loss, mask).sum() / (batch_size * ctx.max_completion_length) / ctx.gradient_accumulation_steps


def global_token_mean(per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: ReductionContext) -> torch.Tensor:
    if ctx.window_num_tokens is None:
        raise ValueError("global_token_mean needs the optimizer step's global token count (window_num_tokens)")
    # Each rank divides by (global tokens / ranks): the ranks' gradients are then *averaged* by
    # DDP, which turns the result into sum-over-all-tokens / global tokens. Accumulation needs no
    # extra factor since every micro-batch already divides by the whole window's count.
    normalizer = ctx.window_num_tokens.clamp(min=1.0) / ctx.num_processes
    return masked(per_token_loss, mask).sum() / normalizer


def prompt_mean(per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: ReductionContext) -> torch.Tensor:
    if ctx.token_weight is None or ctx.window_weight is None:
        raise ValueError("prompt_mean needs each row's group token weight and the optimizer step's total weight")
    weighted = masked(per_token_loss, mask) * ctx.token_weight.to(per_token_loss.dtype).unsqueeze(-1)
    # as in global_token_mean: each rank divides by (global weight / ranks), and DDP averages the ranks
    return weighted.sum() / (ctx.window_weight.clamp(min=1e-12) / ctx.num_processes)


def group_token_weights(tokens_per_row: torch.Tensor, num_generations: int) -> torch.Tensor:
    """``prompt_mean``'s per-row weight ``1 / T_p``: one over the loss tokens of the row's whole group.

    ``tokens_per_row`` holds every rank's rows in order (groups are ``num_generations`` consecutive
    rows); a group with no loss tokens gets weight 0.
    """
    totals = tokens_per_row.reshape(-1, num_generations).sum(dim=1, keepdim=True).expand(-1, num_generations).reshape(-1)
    return torch.where(totals > 0, 1.0 / totals.clamp(min=1).to(torch.float64), torch.zeros_like(totals, dtype=torch.float64))


REDUCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, ReductionContext], torch.Tensor]] = {
    "sequence_mean": sequence_mean,
    "batch_token_mean": batch_token_mean,
    "constant_length": constant_length,
    "global_token_mean": global_token_mean,
    "prompt_mean": prompt_mean,
}
