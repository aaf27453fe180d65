"""The loss's metrics over one optimizer step: kept on the device, reduced across ranks once.

A loss reports per-token tensors (a 0/1 "was clipped", the importance weight, ...). Logged as they
come, each micro-batch would cost an all-reduce per metric and a device-to-host copy per value, and
on several GPUs with gradient accumulation every rank would wait for every other at every micro-batch.
Here each metric's token sum, token count and running maximum stay on the device until the step's
last micro-batch; then one all-reduce (sums and counts) and one all-gather (maxima) cover them all,
followed by a single copy to the host. verl and NeMo-RL aggregate their loss metrics once per step too.
"""

from __future__ import annotations

import torch

#: Fill value of masked-out tokens when taking a maximum; a metric that never saw a token stays here.
_LOWEST = torch.finfo(torch.float32).min


class StepMetrics:
    """Token-weighted means and maxima of the current optimizer step (all ranks, all micro-batches)."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}  # name -> sum of the value over completion tokens (float64)
        self._counts: dict[str, torch.Tensor] = {}  # name -> number of those tokens (float64)
        self._maxima: dict[str, torch.Tensor] = {}  # name -> largest value on a completion token (float32)

    def __bool__(self) -> bool:
        return bool(self._sums or self._maxima)

    def add_token_means(self, mask: torch.Tensor, **values: torch.Tensor) -> None:
        """Accumulate each value's sum over the tokens where ``mask`` is 1, and the token count."""
        count = mask.sum().double()
        for name, value in values.items():
            total = (value.detach().expand_as(mask) * mask).sum().double()
            self._add(name, total, count)

    def add_means(self, **values: torch.Tensor) -> None:
        """Accumulate scalars averaged over micro-batches (and ranks), e.g. a router's auxiliary loss."""
        for name, value in values.items():
            self._add(name, value.detach().double().reshape(()), torch.ones((), dtype=torch.float64, device=value.device))

    def add_token_maxima(self, mask: torch.Tensor, **values: torch.Tensor) -> None:
        """Keep each value's running maximum over the tokens where ``mask`` is 1."""
        for name, value in values.items():
            masked = torch.where(mask.bool(), value.detach().expand_as(mask).float(), torch.full_like(mask, _LOWEST, dtype=torch.float32))
            top = masked.max()
            self._maxima[name] = top if name not in self._maxima else torch.maximum(self._maxima[name], top)

    def reduce(self, accelerator) -> dict[str, float]:
        """All ranks' token means and maxima of the step, then forget them. Every rank must call it.

        Two collectives and one host copy, whatever the number of metrics and micro-batches.
        """
        mean_names, max_names = list(self._sums), list(self._maxima)
        parts = []
        if mean_names:
            stacked = torch.stack([self._sums[n] for n in mean_names] + [self._counts[n] for n in mean_names])
            parts.append(accelerator.reduce(stacked, reduction="sum"))
        if max_names:
            stacked = torch.stack([self._maxima[n] for n in max_names])
            gathered = accelerator.gather(stacked).view(accelerator.num_processes, len(max_names))
            parts.append(gathered.max(0).values.double())  # float32 values: exact in float64
        self._sums, self._counts, self._maxima = {}, {}, {}
        host = torch.cat(parts).tolist() if parts else []  # the one device-to-host copy
        result: dict[str, float] = {}
        k = len(mean_names)
        for index, name in enumerate(mean_names):
            result[name] = host[index] / max(host[k + index], 1.0)
        for index, name in enumerate(max_names):
            value = host[2 * k + index]
            if value > _LOWEST:  # some rank saw a completion token
                result[name] = value
        return result

    def _add(self, name: str, total: torch.Tensor, count: torch.Tensor) -> None:
        if name in self._sums:
            self._sums[name] = self._sums[name] + total
            self._counts[name] = self._counts[name] + count
        else:
            self._sums[name], self._counts[name] = total, count
