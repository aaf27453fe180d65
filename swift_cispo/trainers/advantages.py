"""The trainer side of ``advantage_estimator`` / ``kl_in_reward``: TRL's GRPO advantages replaced after each rollout.

TRL computes group-relative advantages inside its 500-line rollout method; rather than copy it, this
mixin lets it run, then, only when the configuration asks for something other than TRL's own
computation, recomputes the advantages of the whole rollout from the rewards it scored
(see :mod:`swift_cispo.rewards.advantages`) and puts this process's slice in their place.
"""

from __future__ import annotations

import torch
from accelerate.utils import gather

from ..rewards.advantages import estimate_advantages, sequence_kl


class AdvantageEstimatorMixin:
    _rollout_rewards_per_func: torch.Tensor | None = None

    def _custom_advantages(self) -> bool:
        return self.args.advantage_estimator != "grpo" or (self.args.kl_in_reward and self.beta != 0.0)

    def _remember_rewards(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        self._rollout_rewards_per_func = rewards_per_func  # every process's rows, in process order
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not self._custom_advantages():
            return output
        mode = "train" if self.model.training else "eval"
        k = self.num_generations if mode == "train" else self.num_generations_eval
        per_func = self._rollout_rewards_per_func
        rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        if self.args.kl_in_reward and self.beta != 0.0:
            rewards = rewards - self.beta * gather(self._rollout_sequence_kl(output)).to(rewards.device)
        advantages = estimate_advantages(rewards, k, self.args.advantage_estimator, self.scale_rewards)
        advantages = torch.nan_to_num(advantages, nan=0.0)
        local = output["advantages"].numel()
        start = self.accelerator.process_index * local
        output["advantages"] = advantages[start : start + local].to(output["advantages"].device)
        logged = self._logs["advantages"]  # completions.jsonl and the completions table show these
        for _ in range(min(len(advantages), len(logged))):
            logged.pop()
        logged.extend(advantages.tolist())
        return output

    @torch.no_grad()
    def _rollout_sequence_kl(self, output: dict) -> torch.Tensor:
        """KL of each local completion from the reference under the policy that generated it."""
        mask = output["completion_mask"]
        old = output.get("old_per_token_logps")
        if old is None:  # on-policy step: the generating policy is the current one
            ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
            attention = torch.cat([output["prompt_mask"], mask], dim=1)
            old, _, _ = self._get_per_token_logps_and_entropies(
                self.model, ids, attention, output["completion_ids"].size(1), batch_size=self.args.per_device_train_batch_size
            )
        return sequence_kl(old, output["ref_per_token_logps"], mask)
