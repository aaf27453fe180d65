"""ms-swift's ``TransformersEngine`` (3.x: ``PtEngine``): chat generation with transformers, for judges.

A generative reward model (a judge) reads each conversation and writes a verdict. ms-swift's plugins do
that with ``TransformersEngine(model, template=...).infer(requests, request_config)``; this is that
interface over the model's own chat template and ``generate``: requests are rendered with
``add_generation_prompt``, left-padded, generated in batches of ``max_batch_size`` (0: all at once), and
answered with ms-swift's response records.
"""

from __future__ import annotations

from typing import Any

from .protocol import ChatCompletionResponse, ChatCompletionResponseChoice, ChatMessage, RequestConfig, UsageInfo

DEFAULT_MAX_TOKENS = 512


def _tokenizer(template):
    """A Hugging Face tokenizer, or the tokenizer an ms-swift-like template object carries."""
    if hasattr(template, "apply_chat_template"):
        return template
    inner = getattr(template, "tokenizer", None) or getattr(template, "processor", None)
    if inner is None or not hasattr(inner, "apply_chat_template"):
        raise TypeError("TransformersEngine needs a tokenizer with a chat template (template=tokenizer)")
    return inner


def _messages(request: Any) -> list[dict]:
    messages = request["messages"] if isinstance(request, dict) else request.messages
    return [dict(message) for message in messages]


class TransformersEngine:
    def __init__(self, model, template=None, max_batch_size: int = 0, **kwargs):
        self.model = model
        self.tokenizer = _tokenizer(template)
        self.max_batch_size = max_batch_size

    def infer(self, infer_requests: list, request_config: RequestConfig | None = None, *, use_tqdm: bool | None = None, **kwargs) -> list[ChatCompletionResponse]:
        config = request_config or RequestConfig()
        size = self.max_batch_size or len(infer_requests) or 1
        responses = []
        for start in range(0, len(infer_requests), size):
            responses.extend(self._generate(infer_requests[start : start + size], config))
        return responses

    async def infer_async(self, infer_request, request_config: RequestConfig | None = None, **kwargs) -> ChatCompletionResponse:
        return self.infer([infer_request], request_config)[0]

    def _generate(self, requests: list, config: RequestConfig) -> list[ChatCompletionResponse]:
        import torch

        tokenizer = self.tokenizer
        texts = [tokenizer.apply_chat_template(_messages(r), tokenize=False, add_generation_prompt=True) for r in requests]
        side, tokenizer.padding_side = tokenizer.padding_side, "left"  # every prompt ends where generation starts
        try:
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        finally:
            tokenizer.padding_side = side
        sampling = bool(config.temperature)  # None or 0: greedy, as ms-swift's judges ask
        options = {"max_new_tokens": config.max_tokens or DEFAULT_MAX_TOKENS, "do_sample": sampling,
                   "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id}
        if sampling:
            options.update(temperature=config.temperature, top_p=config.top_p or 1.0, top_k=config.top_k or 0)
        with torch.inference_mode():
            output = self.model.generate(**batch, **options)
        width = batch["input_ids"].size(1)
        responses = []
        for row, tokens in enumerate(output[:, width:].tolist()):
            eos = tokenizer.eos_token_id
            ended = eos in tokens
            tokens = tokens[: tokens.index(eos) + 1] if ended else tokens
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            prompt_length = int(batch["attention_mask"][row].sum())
            choice = ChatCompletionResponseChoice(
                index=0, message=ChatMessage(role="assistant", content=text), finish_reason="stop" if ended else "length",
                token_ids=tokens,
            )  # fmt: skip
            usage = UsageInfo(prompt_tokens=prompt_length, completion_tokens=len(tokens), total_tokens=prompt_length + len(tokens))
            responses.append(ChatCompletionResponse(model=str(getattr(self.model, "name_or_path", "judge")), choices=[choice], usage=usage))
        return responses
