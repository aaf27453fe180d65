"""Entry point of the ``swift`` and ``swift-cispo`` commands."""

from __future__ import annotations

import logging
import os
import sys

from ..errors import ReportedError

SUBCOMMANDS = {
    "rlhf": "train a policy with CISPO or another GRPO-family loss",
    "rollout": "serve a model with vLLM for --vllm_mode server",
    "export": "merge a LoRA adapter into its base model (--adapters DIR --merge_lora true)",
    "fit": "fit ScaleRL's saturating curve to runs' pass rate and compare them (swift fit RUN_DIR...)",
}

USAGE = "usage: swift <subcommand> [flags]\n\nsubcommands:\n" + "\n".join(
    f"  {name:<8} {text}" for name, text in SUBCOMMANDS.items()
) + "\n\nrun 'swift <subcommand> --help' for its flags"


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[swift-cispo] %(message)s"))
    log = logging.getLogger("swift_cispo")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if _rank() == 0 else logging.ERROR)  # one process tells the story
    log.propagate = False


def _error(command: str, err: Exception) -> None:
    where = f" (process {_rank()})" if _rank() > 0 else ""
    print(f"swift {command}: error{where}: {err}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        from .. import __version__

        print(f"swift-cispo {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"swift: error: unknown subcommand '{command}'; available: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    _setup_logging()
    try:
        if command == "rollout":
            from . import rollout

            return rollout.run(rest)
        if command == "export":
            from . import export

            return export.run(rest)
        if command == "fit":
            from . import fit

            return fit.run(rest)
        from . import rlhf

        return rlhf.run(rest)
    except ReportedError as err:  # bad input (2), or a failing rollout server (1): one sentence, no traceback
        _error(command, err)
        return err.exit_code


def entry() -> None:
    code = main()
    if code == 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _leave_worker()
    sys.exit(code)


def _leave_worker() -> None:
    """End a launched worker whose run finished (model, logs and checkpoints written) without C++ teardown.

    A gloo thread still alive when the C++ statics are destroyed aborted a ZeRO-3 worker on CPU now and then
    ('terminate called without an active exception', status -6), after everything was written and the process
    group destroyed; the launcher then reported the whole run as failed. Python's exit handlers still run.
    """
    import atexit

    atexit._run_exitfuncs()  # noqa: SLF001  (weakref finalizers, report_to integrations, logging)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    entry()
