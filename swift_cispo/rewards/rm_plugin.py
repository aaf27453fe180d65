"""Reward-model plugins: how a reward model scores a batch, ms-swift's interface and registry (``rm_plugins``).

A plugin is built as ``rm_plugins[name](model=..., template=...)`` and called with the batch's rows
(dicts holding the whole conversation as ``messages`` plus the dataset's columns); it returns one
score per row. ``template`` is ms-swift's prompt template there; here it is the reward model's Hugging
Face tokenizer, whose chat template formats the conversation. ``swift rlhf --reward_model PATH
[--reward_model_plugin NAME]`` loads the model and scores every completion with the plugin
(:func:`reward_model_function`); its rewards are weighted and logged like a reward function's.
"""

from __future__ import annotations

import logging
import re
from copy import deepcopy
from typing import Dict, List, Optional

from ..errors import UserError

logger = logging.getLogger("swift_cispo")


class DefaultRMPlugin:
    """A sequence-classification reward model: the first logit of each conversation is its reward."""

    def __init__(self, model, template):
        self.model = model
        self.template = template

    def __call__(self, inputs: List[Dict], **kwargs):
        import torch

        if hasattr(self.template, "encode") and hasattr(self.template, "data_collator"):  # an ms-swift template
            batch = self.template.data_collator([self.template.encode(deepcopy(row)) for row in inputs])
        else:  # a tokenizer
            texts = [self.template.apply_chat_template(row["messages"], tokenize=False) for row in inputs]
            batch = self.template(texts, padding=True, return_tensors="pt")
        batch = {key: value.to(self.model.device) for key, value in batch.items() if hasattr(value, "to")}
        with torch.inference_mode():
            return self.model(**batch).logits[:, 0]


class GenRMPlugin(DefaultRMPlugin):
    """A generative judge: the reward model writes an assessment ending in ``Reward: <0..1>``."""

    system = (
        "Based on the dialogue history, judge whether the model's last response is accurate, complete and relevant. "
        "End with a score between 0 (wrong) and 1 (fully correct) written as: Reward: <score>"
    )

    max_tokens = 256  # the judge's assessment and its "Reward: <score>" line

    def __init__(self, model, template):
        from ..rollout.protocol import RequestConfig
        from ..rollout.transformers_engine import TransformersEngine

        super().__init__(model, template)
        self.engine = TransformersEngine(model, template=template)
        self.request_config = RequestConfig(temperature=0, max_tokens=self.max_tokens)  # greedy: a judge is deterministic

    def __call__(self, inputs: List[Dict], **kwargs):
        import torch

        results = self.engine.infer(self.prepare_rm_inputs(inputs), self.request_config, use_tqdm=False)
        return torch.tensor(self.compute_rewards(results), dtype=torch.float32)

    def prepare_rm_inputs(self, inputs: List[Dict]) -> List[Dict]:
        """Each row's conversation folded into one query for the judge, under the judge's system prompt."""
        prepared = []
        for row in inputs:
            row = deepcopy(row)
            query = self.messages_to_query(row["messages"])
            row["messages"] = [{"role": "system", "content": self.system}, {"role": "user", "content": query}]
            prepared.append(row)
        return prepared

    @staticmethod
    def extract_reward(model_output: str) -> Optional[float]:
        match = re.search(r"Reward:\s*([0-1](?:\.\d+)?)", model_output)
        return float(match.group(1)) if match else None

    @staticmethod
    def messages_to_query(messages: List[Dict]) -> str:
        """``User: ...\\nAssistant: ...``, skipping empty messages."""
        return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages if m.get("content"))

    def compute_rewards(self, results) -> List[float]:
        """Per response, the mean of the rewards its choices state (0.0 when none states one)."""
        rewards = []
        for response in results:
            stated = [r for r in (self.extract_reward(choice.message.content) for choice in response.choices) if r is not None]
            if not stated:
                logger.warning("the judge stated no 'Reward: <score>'; scoring the response 0.0")
            rewards.append(sum(stated) / len(stated) if stated else 0.0)
        return rewards


#: Name -> reward-model plugin class; plugin files add theirs (``rm_plugins['mine'] = MyPlugin``).
rm_plugins: Dict[str, type] = {"default": DefaultRMPlugin, "genrm": GenRMPlugin}


def rm_plugin_class(name: str) -> type:
    """The plugin ``--reward_model_plugin NAME`` names, or one sentence listing the registered ones."""
    if name not in rm_plugins:
        registered = ", ".join(sorted(rm_plugins))
        raise UserError(f"unknown reward-model plugin '{name}'; registered: {registered} (plugin files add more)")
    return rm_plugins[name]


def is_judge(plugin: type) -> bool:
    return issubclass(plugin, GenRMPlugin)


def conversation(prompt, completion) -> list[dict]:
    """The prompt and the completion as one conversation (what a reward model reads)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    reply = completion[-1]["content"] if isinstance(completion, list) else completion
    return [*messages, {"role": "assistant", "content": reply}]


def reward_model_function(plugin, name: str):
    """A reward function (TRL's calling convention) that scores each completion with ``plugin``: it gets the
    rows as ms-swift's plugins do, the whole conversation as ``messages`` beside the dataset's columns."""

    def score(prompts, completions, **columns) -> list[float]:
        rows = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            row = {key: value[i] for key, value in columns.items() if isinstance(value, list) and len(value) == len(completions)}
            row["messages"] = conversation(prompt, completion)
            rows.append(row)
        rewards = plugin(rows)
        return [float(value) for value in (rewards.tolist() if hasattr(rewards, "tolist") else rewards)]

    score.__name__ = name
    return score
