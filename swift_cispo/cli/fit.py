"""``swift fit RUN_DIR...``: ScaleRL's saturating curve fitted to each run's pass rate, compared on one axis."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .parser import make_parser, normalise_flags


@dataclass
class FitArguments:
    metric: str | None = field(
        default=None,
        metadata={"help": "The logged metric to fit (default: eval_reward when a run evaluated, else reward)."},
    )
    compute: str = field(
        default="tokens",
        metadata={"help": "The compute axis: tokens (the rollouts' cumulative prompt + completion tokens, TRL's "
                  "num_tokens) or steps.", "choices": ["tokens", "steps"]},
    )
    out: str | None = field(
        default=None,
        metadata={"help": "Where to draw the runs and their curves (PNG). Default: RUN_DIR/scaling_fit.png for one "
                  "run; required for several."},
    )


USAGE = "swift fit RUN_DIR [RUN_DIR ...] [--metric NAME] [--compute tokens|steps] [--out FILE.png]"


def run(argv: list[str]) -> int:
    from ..records import METRICS_FILE, read_jsonl
    from ..scaling import FitError, fit_saturating_curve, run_points

    argv = normalise_flags(argv)
    split = next((i for i, token in enumerate(argv) if token.startswith("-")), len(argv))
    runs, flags = [Path(p) for p in argv[:split]], argv[split:]
    parser = make_parser((FitArguments,), prog="swift fit")
    if "--help" in flags or "-h" in flags:
        print(f"usage: {USAGE}\n\nFits R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B) (ScaleRL) to each run's logging.jsonl.")
        parser.print_help()
        return 0
    (args, remaining) = parser.parse_args_into_dataclasses(args=flags, return_remaining_strings=True)
    if remaining:
        raise UserError(f"unexpected argument {remaining[0]!r}; run directories come first: {USAGE}")
    if not runs:
        raise UserError(f"name at least one run directory (a swift rlhf --output_dir): {USAGE}")
    for folder in runs:
        if not (folder / METRICS_FILE).is_file():
            raise UserError(f"{folder} holds no {METRICS_FILE}: give the --output_dir of a swift rlhf run")
    if args.out is None and len(runs) > 1:
        raise UserError("several runs are drawn on one picture: say where with --out FILE.png")
    out = Path(args.out) if args.out else runs[0] / "scaling_fit.png"
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out} must name a .png file")
    drawn, rows, metric = [], [], None
    for folder in runs:
        records = read_jsonl(folder / METRICS_FILE)
        try:
            metric, xs, ys = run_points(records, args.metric, args.compute)
            fit = fit_saturating_curve(xs, ys)
        except FitError as err:
            raise UserError(f"{folder}: {err}") from None
        drawn.append((folder.name, xs, ys, fit))
        rows.append((folder, metric, fit))
    print(f"| run | metric | points | R0 | A | B | C_mid ({args.compute}) | rmse | pinned down |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for folder, name, fit in rows:
        print(f"| {folder} | {name} | {fit.points} | {fit.r0:.4f} | {fit.a:.4f} ± {fit.a_err:.4f} | {fit.b:.3f} ± {fit.b_err:.3f} "
              f"| {fit.c_mid:.4g} ± {fit.c_mid_err:.2g} | {fit.rmse:.4f} | {'yes' if fit.pinned_down else 'no'} |")
    if not all(fit.pinned_down for _, _, fit in rows):
        print("pinned down = no: A's error is as large as its gain, or B sits at a bound; these points do not determine "
              "the curve (train longer, or log more often)")
    from ..plots import plot_scaling_fits

    plot_scaling_fits(drawn, out, metric, args.compute)
    print(f"drawn: {out}")
    return 0
