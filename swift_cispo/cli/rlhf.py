"""``swift rlhf``: train a policy with a GRPO-family loss (CISPO by default) from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from ..errors import UserError, first_line
from .args import ALIASES, DataArguments, ModelArguments, RLHFArguments, training_arguments_class
from .model import check_context_length, check_model_source, load_model_and_tokenizer, lora_config
from .outputs import launcher_output_dir, remove_if_empty, resolve_output_dir, worker_output_dir
from .parser import reject_repeated_flags, expand_config_files, explicit_flags, make_parser, normalise_flags, reject_unsupported

logger = logging.getLogger("swift_cispo")


def build_parser():
    """The parser over every ``swift rlhf`` flag (imports TRL's config, for the training flags), the ms-swift
    flags this CLI implements and, declared from the catalogue, the ms-swift flags it does not."""
    from . import msswift

    own = (ModelArguments, DataArguments, RLHFArguments, training_arguments_class(), msswift.MsSwiftArguments)
    implemented = {f.name for cls in own for f in dataclasses.fields(cls)} | set(ALIASES)
    return make_parser((*own, msswift.declared_arguments_class(implemented)), prog="swift rlhf")


def parse(argv: list[str]):
    """Command line -> (model, data, rlhf, training) argument objects and whether it is the demo."""
    from . import spec

    reject_repeated_flags(argv)
    argv = normalise_flags(expand_config_files(argv))
    if "--help" in argv or "-h" in argv:  # answered from the stored text: no TRL import for --help
        print(spec.stored()["help"], end="")
        raise SystemExit(0)
    reject_unsupported(argv, spec.stored()["flags"])  # a wrong flag is refused before TRL is imported
    parser = build_parser()
    given = explicit_flags(argv)
    demo = "model" not in given and "dataset" not in given
    if demo:
        from ..demo import DEMO_HPARAMS

        preset = [tok for name, value in DEMO_HPARAMS.items() if name not in given for tok in _as_tokens(name, value)]
        argv = preset + argv
    elif "model" not in given:
        raise UserError("--dataset needs --model (omit both to train the embedded demo)")
    elif "dataset" not in given:
        raise UserError("--model needs --dataset (omit both to train the embedded demo)")
    model_args, data_args, rlhf_args, train_args, ms_args, declared, remaining = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    if remaining:
        raise UserError(_unexpected_value(argv, remaining[0]))
    from . import msswift
    from .ranges import check_ranges

    notes = msswift.check_declared(declared)  # ms-swift flags: their default accepted, another value refused
    check_ranges(model_args, data_args, rlhf_args, train_args, ms_args)  # before anything is loaded
    notes += msswift.apply(ms_args, model_args, data_args, train_args, given)
    from . import recipes
    from ..distributed.launch import launch_plan

    recipe = recipes.apply(rlhf_args.recipe, train_args, given)
    if launch_plan(needs_launcher=bool(train_args.deepspeed)) is None:  # a launcher leaves the telling to its workers
        msswift.log_notes(notes)
        for line in recipe:
            logger.info("recipe %s: %s", rlhf_args.recipe, line)
    if data_args.split_dataset_ratio > 0 and "eval_strategy" not in given:
        train_args.eval_strategy = "steps"  # a held-out set is there to be evaluated; every --eval_steps (default: --logging_steps)
    return model_args, data_args, rlhf_args, train_args, demo


def _unexpected_value(argv: list[str], token: str) -> str:
    """The sentence for a value no flag takes: usually a second value given to a one-value flag (a list in a config file)."""
    position = argv.index(token) if token in argv else -1
    flag = next((argv[i] for i in range(position - 1, -1, -1) if argv[i].startswith("--")), None) if position > 0 else None
    if flag is None:
        return f"unexpected argument {token!r}; flag values follow their --flag"
    values = []
    for item in argv[argv.index(flag) + 1 :]:
        if item.startswith("--"):
            break
        values.append(item)
    return f"{flag} takes one value but got {len(values)} ({' '.join(values)}); in a config file, give it a single value, not a list"


def _as_tokens(name: str, value) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [f"--{name}", *(("true" if v else "false") if isinstance(v, bool) else str(v) for v in values)]


def run(argv: list[str]) -> int:
    model_args, data_args, rlhf_args, train_args, demo = parse(argv)

    from .reporting import check_reporting
    from ..distributed.launch import launch, launch_plan

    plan = launch_plan(needs_launcher=bool(train_args.deepspeed))
    if plan is not None:  # NPROC_PER_NODE / NNODES (or DeepSpeed): this process only starts the workers
        # Check everything a worker would check before loading data, so a mistake is reported once, not N times.
        with _quiet():
            _, _, reward_funcs = prepare(model_args, data_args, rlhf_args, train_args, demo)
            config = build_config(
                train_args, Path(train_args.output_dir or "output"), len(reward_funcs), world_size=plan.world_size, template=data_args
            )
            check_reporting(config.report_to)
        checkpoint = resume_point(train_args, model_args)  # resolved once ("latest"), so that every node resumes the same one
        output_dir = launcher_output_dir(train_args.output_dir, train_args.loss_type, plan, checkpoint)
        fixed = ["--output_dir", str(output_dir)]
        if checkpoint is not None:
            fixed += ["--resume_from_checkpoint", str(checkpoint)]
        return launch(plan, "rlhf", [*argv, *fixed], str(output_dir))

    columns, peft_config, reward_funcs = prepare(model_args, data_args, rlhf_args, train_args, demo)
    checkpoint = resume_point(train_args, model_args)
    output_dir = worker_output_dir(train_args.output_dir) or resolve_output_dir(train_args.output_dir, train_args.loss_type, checkpoint)
    train_args.resume_from_checkpoint = None if checkpoint is None else str(checkpoint)
    try:
        config = build_config(train_args, output_dir, len(reward_funcs), template=data_args)
        check_reporting(config.report_to)
    except UserError:
        remove_if_empty(output_dir)
        raise

    from ..data import load_datasets, split_for_evaluation

    try:
        map_options = {"num_proc": data_args.dataset_num_proc if data_args.dataset_num_proc > 1 else None,
                       "load_from_cache_file": data_args.load_from_cache_file,
                       "auto_columns": not data_args.disable_auto_column_mapping}
        dataset = load_datasets(data_args.dataset, seed=config.seed, system=data_args.system, columns=columns,
                                map_options=map_options, agent_template=data_args.agent_template)
        _refuse_empty_run(config, dataset)  # before the weights load: a run that trains nothing must not exit 0
        from ..distributed import prepare_deepspeed

        prepare_deepspeed(config)  # before the weights load: ZeRO-3 partitions them as they do
        _check_memory(model_args, data_args, config, dataset, peft_config)  # before the weights load, too
        model, tokenizer = load_model_and_tokenizer(model_args)
        from .reward_models import load_reward_models

        reward_funcs = load_reward_models(reward_funcs, model_args, config)
        check_context_length(model, config)
        dataset = _limit_prompt_length(dataset, tokenizer, data_args, config, model)
        dataset, eval_dataset = split_for_evaluation(dataset, data_args.split_dataset_ratio, config.seed)
        _refuse_empty_run(config, dataset)  # prompts deleted by --max_length, or held out for evaluation
    except UserError:
        remove_if_empty(output_dir)
        raise
    if eval_dataset is not None:
        strategy = _strategy(config.eval_strategy)
        when = f"every {config.eval_steps:g} steps" if strategy == "steps" else f"(eval_strategy {strategy})"
        logger.info("holding out %d of %d rows for evaluation %s", len(eval_dataset), len(dataset) + len(eval_dataset), when)
    return _train(model, tokenizer, reward_funcs, config, dataset, output_dir, eval_dataset, peft_config, rlhf_args.scaling_fit)


def _refuse_empty_run(config, dataset) -> None:
    from ..trainers.run_checks import empty_run_reason

    reason = empty_run_reason(config, len(dataset))
    if reason:
        raise UserError(reason)


def _check_memory(model_args, data_args, config, dataset, peft_config) -> None:
    """Warn (swift_cispo.memory) when one micro-batch is estimated not to fit, from the model's config and tokenizer
    alone. The longest prompts by characters stand for the longest in tokens. Advice only: it never stops a run."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from ..memory import check_run, longest_prompt_tokens
    from .model import resolve_dtype

    try:
        source = str(Path(model_args.model).expanduser()) if Path(model_args.model).expanduser().exists() else model_args.model
        model_config = AutoConfig.from_pretrained(source, trust_remote_code=model_args.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=model_args.trust_remote_code)
        tokens = longest_prompt_tokens(tokenizer, dataset["prompt"], config.chat_template_kwargs, data_args.max_length)
        dtype = resolve_dtype(model_args.torch_dtype)
        if dtype == "auto":  # the checkpoint's dtype, as from_pretrained takes it
            dtype = getattr(model_config, "dtype", None) or "float32"
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        lora = (peft_config.target_modules, peft_config.r) if peft_config is not None else (None, 0)
        check_run(model_config, dtype, tokens, config, *lora)
        config.memory_checked = True  # the trainer need not estimate it again
    except Exception as err:  # noqa: BLE001  (an estimate that cannot be made is no reason to stop)
        logger.debug("no memory estimate: %s", first_line(err))


def _limit_prompt_length(dataset, tokenizer, data_args, config, model):
    """--max_length / --truncation_strategy on the prompts, with the count of rows it touched in the log.

    Without --max_length the limit is what the model's context leaves after --max_completion_length (as
    ms-swift defaults max_length to the model's length): a longer prompt could not be completed, and
    generating from it ground on until killed.
    """
    from ..prompt_length import apply_max_length

    limit, what = data_args.max_length, f"--max_length {data_args.max_length}"
    context = getattr(model.config, "max_position_embeddings", None)
    if limit is None and context:
        limit = context - config.max_completion_length
        what = f"the model's context ({context}) minus --max_completion_length ({config.max_completion_length})"
        if limit < 1:
            raise UserError(
                f"--max_completion_length {config.max_completion_length} leaves no room for a prompt in the model's context "
                f"of {context} tokens; lower it"
            )
    dataset, affected = apply_max_length(dataset, tokenizer, limit, data_args.truncation_strategy, config.chat_template_kwargs)
    if affected:
        done = "deleted" if data_args.truncation_strategy == "delete" else "left-truncated"
        logger.warning("%s %d prompts longer than %s, %d tokens", done, affected, what, limit)
    return dataset


def resume_point(train_args, model_args: ModelArguments):
    """The complete checkpoint ``--resume_from_checkpoint`` names (or the newest one, for 'latest'), or None;
    one that does not fit ``--model`` (or holds files this tool does not write) is refused here, before any compute."""
    from ..checkpoints import check_resume_fits, resolve_resume

    checkpoint, skipped = resolve_resume(train_args.resume_from_checkpoint, train_args.output_dir)
    for folder, reason in skipped:
        logger.warning("not resuming from %s: %s", folder, reason)
    if checkpoint is not None:
        lora_rank = model_args.lora_rank if model_args.train_type == "lora" else None
        check_resume_fits(checkpoint, model_args.model, model_args.trust_remote_code, model_args.train_type, lora_rank)
    return checkpoint


def prepare(model_args: ModelArguments, data_args: DataArguments, rlhf_args: RLHFArguments, train_args, demo: bool):
    """The checks and objects that need no data or weights: plugins, the demo's paths, columns, LoRA, rewards."""
    from .. import plugins
    from ..rewards import orms, reward_function

    plugins.load_plugins(rlhf_args.external_plugins)  # before the config: a plugin may register the loss
    if demo:
        from ..demo import DEMO_DATASET_PATH, DEMO_HPARAMS, DEMO_MODEL_DIR

        model_args.model = str(DEMO_MODEL_DIR)
        data_args.dataset = [str(DEMO_DATASET_PATH)]
        rlhf_args.reward_funcs = rlhf_args.reward_funcs or ["exact_match"]
        shown = ", ".join(f"{k}={getattr(train_args, k)}" for k in DEMO_HPARAMS)
        logger.info("no --model/--dataset given: training the embedded demo (%s)", DEMO_DATASET_PATH.name)
        logger.info("demo settings (override any with its flag): %s", shown)
    check_model_source(model_args.model, model_args.trust_remote_code)
    from ..data import parse_columns

    columns = parse_columns(data_args.columns)
    peft_config = lora_config(model_args)
    if getattr(train_args, "multi_turn_scheduler", None):
        from ..rollout.multi_turn import scheduler_class

        scheduler_class(train_args.multi_turn_scheduler)  # after the plugins, before any weights load
    from .reward_models import reward_model_specs

    models = reward_model_specs(rlhf_args.reward_model, rlhf_args.reward_model_plugin)
    served = _server_scheduler(train_args)
    if not rlhf_args.reward_funcs and not models and not getattr(train_args, "use_gym_env", False) and not (served or {}).get("use_gym_env"):
        raise UserError(f"--reward_funcs is required: name at least one reward (available: {', '.join(sorted(orms))}), or give --reward_model")
    reward_funcs = [reward_function(name, reward_options(rlhf_args, train_args)) for name in rlhf_args.reward_funcs or []]
    return columns, peft_config, [*reward_funcs, *models]  # reward models load with the policy (load_reward_models)


def _server_scheduler(train_args) -> dict | None:
    """Server mode: the multi-turn scheduler the rollout server runs (its /info), checked against the flags before
    any weights load: a second scheduler here, or --async_generate, is refused. A server's gym environment gives
    the reward when no other is named (ms-swift's `swift rollout --use_gym_env true`)."""
    from ..trainers.multi_turn import check_server_scheduler, server_scheduler

    served = server_scheduler(train_args)
    if served is not None:
        check_server_scheduler(train_args, served)
    return served


def build_config(train_args, output_dir: Path, num_rewards: int, world_size: int | None = None, template=None):
    """The trainer's GRPOConfig from the training flags; its ValueErrors become one-sentence UserErrors.

    ``world_size`` (the launcher, before its workers exist): check the config those ``world_size``
    workers will build. transformers reads a DeepSpeed config only inside the workers' world, so here
    the DeepSpeed file is checked on its own.
    ``template``: the data arguments whose chat-template and stop-word flags become config fields.
    """
    import contextlib

    from ..distributed import resolve_deepspeed_config
    from ..trainers.config import GRPOConfig, planned_world_size
    from .msswift import template_config

    fields = dataclasses.asdict(train_args)
    if template is not None:
        fields.update(template_config(template, train_args.use_vllm))
    fields["output_dir"] = str(output_dir)
    fields["dataloader_pin_memory"] = _has_accelerator()  # pinning is pointless (and warns) on a CPU-only machine
    try:
        if world_size is not None:
            resolve_deepspeed_config(fields.pop("deepspeed"))
        with planned_world_size(world_size) if world_size is not None else contextlib.nullcontext():
            config = GRPOConfig(**fields)
    except ValueError as err:
        raise UserError(first_line(err)) from None
    if config.reward_weights is not None and len(config.reward_weights) != num_rewards:
        raise UserError(
            f"--reward_weights has {len(config.reward_weights)} values for {num_rewards} reward functions; give one per function"
        )
    return config


class _quiet:
    """Silence swift-cispo's info logs for a block (the launcher's checks; the workers log the same)."""

    def __enter__(self):
        self.level = logger.level
        logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        logger.setLevel(self.level)


def reward_options(rlhf_args: RLHFArguments, train_args) -> dict:
    """Flag values offered to the rewards' constructors (each takes those its parameters name)."""
    options = dataclasses.asdict(rlhf_args)
    options["max_completion_length"] = train_args.max_completion_length
    options["cosine_max_len"] = rlhf_args.cosine_max_len or train_args.max_completion_length
    options["soft_max_length"] = rlhf_args.soft_max_length or train_args.max_completion_length
    # ms-swift builds its ORMs as cls(args=<training arguments>): an `args` parameter gets every flag.
    options["args"] = argparse.Namespace(**{**dataclasses.asdict(train_args), **options})
    return options


def _strategy(value) -> str:
    return str(getattr(value, "value", value))


def _train(model, tokenizer, reward_funcs, config, dataset, output_dir: Path, eval_dataset=None, peft_config=None,
           scaling_fit: bool = False) -> int:
    from transformers.trainer_callback import ProgressCallback

    from ..records import CURVES_FILE, METRICS_FILE, MetricsFileCallback
    from ..trainers import GRPOTrainer
    from .progress import CompactProgressCallback

    from ..generation.client import RolloutServerError
    from ..losses import describe

    metrics = MetricsFileCallback(output_dir)
    try:
        trainer = GRPOTrainer(
            model=model,
            processing_class=tokenizer,
            reward_funcs=reward_funcs,
            args=config,
            train_dataset=dataset,
            eval_dataset=eval_dataset,
            callbacks=[*_fit_callback(scaling_fit, output_dir), metrics],  # the fit first: the metrics file records its values
            peft_config=peft_config,
        )
    except ValueError as err:
        if peft_config is None or "target modules" not in str(err).lower():
            raise
        remove_if_empty(output_dir)
        raise UserError(f"--target_modules {' '.join(peft_config.target_modules)}: {first_line(err)}") from None
    except RolloutServerError:
        remove_if_empty(output_dir)
        raise
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(CompactProgressCallback)
    logger.info(
        "training %s with loss_type=%s (%s) for %d steps; output: %s",
        type(model).__name__,
        config.loss_type,
        describe(config.loss_type, trainer.loss_config),
        trainer.args.max_steps if trainer.args.max_steps > 0 else -1,
        output_dir,
    )
    if config.resume_from_checkpoint:
        logger.info("resuming from %s", config.resume_from_checkpoint)
    try:
        trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    except KeyboardInterrupt:
        logger.error("interrupted; checkpoints saved so far are in %s", output_dir)
        return 130
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        _summarise(metrics.records, output_dir / METRICS_FILE, output_dir / CURVES_FILE)
    if trainer.use_vllm:
        trainer.vllm_generation.shutdown()  # rollouts still queued are not needed; the engine stops in its process group
    _leave_process_group()
    return 0


def _fit_callback(wanted: bool, output_dir: Path) -> list:
    if not wanted:
        return []
    from ..records import ScalingFitCallback

    return [ScalingFitCallback(output_dir, logger)]


def _leave_process_group() -> None:
    """Close the process group before exiting. Left to interpreter shutdown, a gloo worker thread was still
    alive when C++ static objects were destroyed: 'terminate called without an active exception', status -6,
    in about 1 of 4 ZeRO-3 runs on CPU, after the model had been saved."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _summarise(records: list[dict], metrics_path: Path, curves_path: Path) -> None:
    points = [(r["step"], r["reward"]) for r in records if "reward" in r]
    if points:
        window = min(5, len(points))
        last = sum(value for _, value in points[-window:]) / window
        logger.info(
            "mean reward: %.3f at step %d -> %.3f (mean of the last %d logs, to step %d)",
            points[0][1], points[0][0], last, window, points[-1][0],
        )
    logger.info("metrics: %s", metrics_path)
    if curves_path.exists():
        logger.info("curves: %s", curves_path)


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()

