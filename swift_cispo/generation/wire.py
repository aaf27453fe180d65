"""How weights travel over HTTP: safetensors bytes in buckets (no pickle, so a server loads nothing executable)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

#: Bytes per HTTP request when streaming weights: large enough to amortise a request, small enough that
#: the trainer never holds more than this in serialised form.
DEFAULT_BUCKET_BYTES = 256 * 2**20


def bucket_weights(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> Iterator[bytes]:
    """Serialise ``(name, tensor)`` pairs into safetensors blobs of at most ~``bucket_bytes`` each.

    A tensor larger than the bucket travels alone. Tensors are copied to CPU and made contiguous here,
    while the caller (e.g. a ZeRO-3 gather) still holds them.
    """
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in named_tensors:
        tensor = tensor.detach().to("cpu").contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield save_safetensors(bucket)
            bucket, size = {}, 0
        if any(tensor.data_ptr() == other.data_ptr() for other in bucket.values()):
            tensor = tensor.clone()  # a tied alias: safetensors refuses two names for one storage
        bucket[name] = tensor
        size += nbytes
    if bucket:
        yield save_safetensors(bucket)


def unbucket_weights(blob: bytes) -> list[tuple[str, torch.Tensor]]:
    return list(load_safetensors(blob).items())
