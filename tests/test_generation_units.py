"""The pieces of the rollout backends that need no engine: weight buckets, tied names, the collective path."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from swift_cispo.distributed.launch import free_port
from swift_cispo.generation.client import RolloutClient, RolloutServerError
from swift_cispo.generation.collective import SERVER_RANK, TRAINER_RANK, broadcast, describe, open_group, receive
from swift_cispo.generation.wire import bucket_weights, unbucket_weights


def test_buckets_round_trip_split_by_size_and_keep_tied_aliases():
    embed = torch.randn(50, 8, dtype=torch.float32)
    weights = [("model.embed_tokens.weight", embed), ("layer.weight", torch.randn(8, 8, dtype=torch.float32)), ("lm_head.weight", embed)]
    blobs = list(bucket_weights(weights, bucket_bytes=embed.numel() * 4))  # an embedding fills a bucket
    assert [len(unbucket_weights(blob)) for blob in blobs] == [1, 1, 1]
    assert len(list(bucket_weights(weights, bucket_bytes=10 * embed.numel() * 4))) == 1
    back = [item for blob in blobs for item in unbucket_weights(blob)]
    assert [name for name, _ in back] == [name for name, _ in weights]
    for (_, sent), (_, got) in zip(weights, back):
        assert torch.equal(sent, got)


def test_one_bucket_holds_a_tied_pair():
    embed = torch.randn(4, 4)
    (blob,) = bucket_weights([("a", embed), ("b", embed)])  # safetensors refuses shared storage: a copy is made
    assert {name for name, _ in unbucket_weights(blob)} == {"a", "b"}


def test_tied_aliases_name_the_output_head(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from swift_cispo.generation.backends import tied_aliases

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert tied_aliases(model) == {"model.embed_tokens.weight": ["lm_head.weight"]}


def test_gloo_group_delivers_every_tensor_in_order():
    port = free_port()
    sent = [
        ("a", torch.randn(3, 5, dtype=torch.float32)),
        ("b", torch.randn(7, dtype=torch.float32).to(torch.bfloat16)),
        ("c", torch.randn(2, 2, 2, dtype=torch.float64)),
    ]
    metadata = describe(sent)
    assert metadata == [["a", "float32", [3, 5]], ["b", "bfloat16", [7]], ["c", "float64", [2, 2, 2]]]
    received = {}

    def server():
        group = open_group("127.0.0.1", port, SERVER_RANK, "gloo", timeout_s=30)
        received["weights"] = receive(group, metadata, "cpu")

    thread = threading.Thread(target=server)
    thread.start()
    group = open_group("127.0.0.1", port, TRAINER_RANK, "gloo", timeout_s=30)
    for _, tensor in sent:
        broadcast(group, tensor)
    thread.join(30)
    assert [name for name, _ in received["weights"]] == ["a", "b", "c"]
    for (_, a), (_, b) in zip(sent, received["weights"]):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_a_server_that_never_answers_is_waited_for_then_named():
    """The client polls for --vllm_server_timeout seconds, not less, then names the server in one sentence."""
    port = free_port()  # nothing listens there
    client = RolloutClient(port=port, timeout=1.5)
    start = time.monotonic()
    with pytest.raises(RolloutServerError, match=f"no rollout server answered at 127.0.0.1:{port} within 1.5 s"):
        client.wait_until_up(poll_interval=0.2)
    assert 1.5 <= time.monotonic() - start < 30


def test_vllm_runs_in_the_layers_dtype_when_the_tied_head_is_float32(tiny_model_dir):
    """--cast_lm_head_to_fp32 with tied embeddings leaves the embedding in float32 and the layers in bfloat16;
    the engine must run in bfloat16 (with its head in float32), not in the first parameter's float32."""
    from transformers import AutoModelForCausalLM

    from swift_cispo.generation.backends import _vllm_dtype

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    assert _vllm_dtype(model) == "bfloat16"
    model.get_input_embeddings().float()  # what TRL's cast does to a tied head (and so to the embedding)
    assert next(model.parameters()).dtype == torch.float32
    assert _vllm_dtype(model) == "bfloat16"
