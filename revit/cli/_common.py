"""Small helpers shared by the command modules (formatting, common arguments)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from revit.errors import ConfigError
from revit.input_checks import count, loader_workers, non_negative, seed, threads


def add_command(sub: Any, name: str, help: str, example: str) -> argparse.ArgumentParser:
    """Add a sub-command whose --help ends with an example."""
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=help, epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return p


def print_json(obj: Any) -> None:
    """``obj`` as JSON on stdout; a NaN or an infinity in it is refused in one line (never ``NaN`` printed)."""
    from revit._io import dumps_json

    sys.stdout.write(dumps_json(obj, "the JSON output", indent=2) + "\n")


log = logging.getLogger("revit.cli")


def info(msg: str) -> None:
    """A human line (summaries, progress notes) logged at INFO: stderr in the CLI, hidden by ``-q``;
    stdout keeps the command's result alone."""
    log.info("%s", msg)


def outcome(msg: str) -> None:
    """A command's closing line on stderr, shown even with ``-q`` (hidden by ``-qq``): how a long run ended."""
    from revit.logs import verbosity

    if verbosity() > -2:
        print(msg, file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    """A line about a possible mistake, logged as a warning (``revit: warning: ...`` on stderr)."""
    log.warning("%s", msg)


def add_run_folder_args(p: argparse.ArgumentParser, contents: str, state_file: str, progress: str) -> None:
    """``--out`` (a run folder holding ``contents``), ``--resume`` (from ``RUN_DIR/state_file``), ``--overwrite``
    and ``--no-progress`` (help: ``progress``): the tail of every command that owns a run folder and can resume."""
    p.add_argument("--out", required=True, help=f"run folder: {contents}")
    p.add_argument("--resume", action="store_true", help=f"continue a killed run from RUN_DIR/{state_file}")
    add_overwrite_arg(p)
    p.add_argument("--no-progress", action="store_true", help=progress)


def add_overwrite_arg(p: argparse.ArgumentParser) -> None:
    """``--overwrite``: replace a finished run of the same kind in ``--out`` (never a folder of another kind)."""
    p.add_argument("--overwrite", action="store_true",
                   help="replace the finished run of this kind in --out (or start an unfinished one over)")


def add_data_args(p: argparse.ArgumentParser, *, test_limit_zero: bool = False) -> None:
    """Dataset options shared by train and prune (``test_limit_zero``: ``--test-limit 0`` skips the test set)."""
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, digits, or an ImageFolder path")
    p.add_argument("--train-limit", type=count(), help="use this many training images (default: all)")
    p.add_argument("--val-size", type=non_negative(),
                   default=5000, help="images held out of the training set for selection")
    if test_limit_zero:
        p.add_argument("--test-limit", type=non_negative(),
                       help="score on this many test images (default: all; 0: none)")
    else:
        p.add_argument("--test-limit", type=count(), help="evaluate on this many test images (default: all)")
    p.add_argument("--seed", type=seed(), default=0,
                   help="seed of the split, the batch order and any random init")
    p.add_argument("--threads", type=threads(), help="torch CPU threads per process (at most 4 per CPU)")


def add_runtime_args(p: argparse.ArgumentParser, *, loader_flag: str = "--workers", training: bool = True) -> None:
    """Device and speed options shared by train and prune (``loader_flag``: --workers/-j, or
    --loader-workers where --workers already counts processes; ``training``: also --compile,
    --channels-last and --grad-accum, which only the training loop implements)."""
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"),
                   help="mixed precision: autocast in bf16, or fp16 with a GradScaler (slow on CPUs without native "
                   "bf16; losses, saliency and scores stay in fp32)")
    if training:
        p.add_argument("--compile", action="store_true", help="torch.compile the model for training")
        p.add_argument("--channels-last", action="store_true", help="NHWC memory format for images and the model")
        p.add_argument("--grad-accum", type=count(), default=1, metavar="N",
                       help="micro-batches of --batch-size per optimizer step")
    flags = (loader_flag, "-j") if loader_flag == "--workers" else (loader_flag,)
    p.add_argument(*flags, dest="loader_workers", type=loader_workers(), default=0, metavar="N",
                   help="DataLoader worker processes per process")


def add_teacher_args(p: argparse.ArgumentParser) -> None:
    """``--teacher NAME`` (a revit config/name or any timm model name), ``--teacher-weights`` and
    ``--teacher-random-init``: the DeiT-style teacher of ``train`` and ``prune``."""
    p.add_argument("--teacher", help="distill from this revit config/name or timm model name (e.g. resnet18, "
                                     "built by timm.create_model, never downloaded) with --teacher-weights; it "
                                     "trains the distillation token of a DeiT-style model, else the class head")
    p.add_argument("--teacher-weights", help="local weights of the teacher (.safetensors, or a weights-only torch "
                                             "file: no pickle runs; required with --teacher)")
    p.add_argument("--teacher-random-init", action="store_true",
                   help="distill from a randomly initialised --teacher on purpose (no --teacher-weights)")


def check_teacher(args: argparse.Namespace) -> None:
    """A teacher needs its weights: distilling from a random init is refused unless asked for explicitly."""
    random_init = getattr(args, "teacher_random_init", False)
    if args.teacher and not args.teacher_weights and not random_init:
        raise ConfigError(f"--teacher {args.teacher} needs --teacher-weights FILE (or --teacher-random-init to "
                          "distill from a random init on purpose)")
    if not args.teacher and (args.teacher_weights or random_init):
        raise ConfigError("--teacher-weights/--teacher-random-init need --teacher CONFIG")
    if args.teacher_weights and random_init:
        raise ConfigError("give --teacher-weights or --teacher-random-init, not both")


def runtime_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields of :func:`add_runtime_args`."""
    return {"device": args.device, "amp": args.amp, "compile": args.compile, "channels_last": args.channels_last,
            "grad_accum": args.grad_accum, "loader_workers": args.loader_workers}


# ---- plug-ins: flags, help and lists generated from what each plug-in declares -----------------------------

def defer_arguments(p: argparse.ArgumentParser, add: Any) -> None:
    """Run ``add(p)`` only when ``p`` parses or prints its help (``revit.cli.main._Parser`` does): arguments that
    come from plug-ins are added then, so building the whole parser imports no plug-in and no torch."""
    p.deferred = [*getattr(p, "deferred", []), add]  # type: ignore[attr-defined]


def run_deferred(p: argparse.ArgumentParser) -> None:
    """Add the arguments :func:`defer_arguments` put off (once)."""
    pending = getattr(p, "deferred", [])
    p.deferred = []  # type: ignore[attr-defined]
    for add in pending:
        add(p)


def add_option_flags(p: argparse.ArgumentParser, module: str, attr: str, chooser: str) -> None:
    """One flag per option that the members of registry ``module.attr`` declare (``option_specs``), e.g.
    ``--graph`` for onnxruntime's ``graph``; left unset (None) unless given, so each member keeps its own
    default, and :func:`given_options` checks the values against the chosen member's declaration.  A flag
    that a revit flag already uses is left out with a warning (a plug-in cannot take ``--out``)."""
    from revit.registry import lazy_choices

    takers: dict[str, list[str]] = {}
    specs: dict[str, Any] = {}
    for row in lazy_choices(module, attr).registry().catalogue():
        for o in row["options"]:
            takers.setdefault(o.name, []).append(row["name"])
            specs.setdefault(o.name, o)
    group = p.add_argument_group(f"options of the {chooser.lstrip('-')}s (each declared by the {chooser} that "
                                 "takes it)")
    for name, o in specs.items():
        who = f"{chooser} {' or '.join(takers[name])}"
        kw: dict[str, Any] = ({"action": "store_true"} if o.default is False else
                              {"action": argparse.BooleanOptionalAction} if o.default is True else
                              {"metavar": "|".join(o.choices) if o.choices else o.kind.upper()})
        try:
            group.add_argument(o.flag, dest=f"plugin_option_{name}", default=None,
                               help=f"{o.help} ({who}; default {o.default_text})", **kw)
        except argparse.ArgumentError:
            warn(f"{who}: its option {name!r} is left out, {o.flag} is a flag of revit's own")


def given_options(a: argparse.Namespace, cls: Any, registry: Any, chooser: str, where: str) -> dict[str, Any]:
    """The values of the plug-in option flags given on the command line, checked against ``cls``'s declaration
    (defaults filled in); a flag of another member's option is refused, naming the members that take it."""
    from revit.options import check_options

    given = {k.removeprefix("plugin_option_"): v for k, v in vars(a).items()
             if k.startswith("plugin_option_") and v is not None}
    own = {o.name for o in getattr(cls, "option_specs", ())}
    for key in given:
        if key not in own:
            takers = [r["name"] for r in registry.catalogue() if key in {o.name for o in r["options"]}]
            raise ConfigError(f"--{key.replace('_', '-')} is an option of {chooser} {' or '.join(takers)}")
    return check_options(getattr(cls, "option_specs", ()), given, where)


def catalogue_lines(registry: Any, width: int = 16) -> list[str]:
    """The members of a registry for people: ``NAME  description`` (aliases, options below it), then each
    broken plug-in with the line saying why; what the list commands print and ``--help`` ends with."""
    from revit.options import describe_options

    lines = []
    for row in registry.catalogue():
        lines.append(f"{row['name']:{width}s}  {row['description']}")
        if row["aliases"]:
            lines.append(f"{'':{width}s}    also: {', '.join(row['aliases'])}")
        lines += [f"{'':{width}s}    option {line}" for line in describe_options(row["options"])]
    lines += [f"{name:{width}s}  broken: {line}" for name, line in registry.broken().items()]
    return lines


def catalogue_json(registry: Any) -> dict[str, Any]:
    """The members of a registry as JSON: ``members`` (name, aliases, description, options) and ``broken``."""
    rows = [{**r, "options": [{"name": o.name, "default": o.default, "help": o.help, "choices": o.choices}
                              for o in r["options"]]} for r in registry.catalogue()]
    return {"family": registry.family, "members": rows,
            "broken": [{"name": n, "error": line} for n, line in registry.broken().items()]}
