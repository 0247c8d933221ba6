"""``revit generate``: a ViT config from a rule, at a width or for a MACs or latency budget.

stdout carries the config YAML alone (or JSON with ``--json``); the summary goes to stderr.
Torch is never imported here unless ``--measure`` asks to time the chosen config; a latency table is loaded
only for ``--latency-ms``.
"""

from __future__ import annotations

import argparse
from typing import Any

from revit.cli._common import add_command, info, print_json
from revit.config import Setting
from revit.counting import count_text
from revit.errors import ConfigError
from revit.input_checks import check_output_file, count, integer, non_negative, number, range_problem, short


def register(sub: Any) -> None:
    p = add_command(sub, "generate", "generate a ViT config from a design rule for a MACs/latency budget or a width",
                    "revit generate --rule paper --macs 4.6G --distilled > revit_s.yaml")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--rule", metavar="R", help="shipped rule name (see `revit rules list`) or a rule YAML path")
    which.add_argument("--uniform", action="store_true", help="DeiT-style uniform baseline (see --head-dim)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--macs", metavar="B", type=count_text(),
                        help="MACs budget, e.g. 4.6G or 150M (met within --tolerance)")
    target.add_argument("--embed-dim", type=count(), metavar="E", help="apply the rule exactly at this embedding width")
    target.add_argument("--latency-ms", type=number(0, lo_open=True), metavar="M",
                        help="latency budget in ms per batch of the table's batch size (needs --table)")
    p.add_argument("--table", metavar="T", help="latency table JSON (for --latency-ms)")
    p.add_argument("--measure", action="store_true",
                   help="with --latency-ms: export the chosen config, time it on the table's backend and re-solve "
                        "until it meets the budget as measured (imports torch; seconds per round)")
    p.add_argument("--measure-tolerance", type=number(0, 0.5, lo_open=True, hi_open=True), default=0.02,
                   help="with --measure: largest measured gap to the budget accepted (0.02)")
    p.add_argument("--measure-rounds", type=count(20), default=4, help="with --measure: most solve-and-time rounds")
    p.add_argument("--head-dim", type=count(), default=None,
                   help="uniform baseline: QK and V width per head (64; 24 with the micro granularity)")
    p.add_argument("--mlp-factor", type=number(0, 1000, lo_open=True), default=1.0,
                   help="with --embed-dim: scale every block's MLP width by this factor (default 1 = the rule)")
    g = p.add_argument_group("setting (defaults: ImageNet 224/16, 12 blocks, 1000 classes)")
    g.add_argument("--setting", choices=sorted(Setting.PRESETS), default="imagenet",
                   help="start from a named setting; micro = 28x28, patch 7, 1 channel, 8 blocks, 10 classes")
    g.add_argument("--depth", type=depth_arg, metavar="N|LOW:HIGH",
                   help="number of blocks (default: the setting's), or LOW:HIGH with a budget: the depth is searched, "
                        "the rule's reference depth (paper: 12) nearest first, else the deepest that meets it")
    g.add_argument("--img-size", type=count())
    g.add_argument("--patch-size", type=count())
    g.add_argument("--in-chans", type=count())
    g.add_argument("--num-classes", type=non_negative(), help="0: a headless model (as in timm)")
    g.add_argument("--distilled", action="store_true", help="add DeiT's distillation token and head")
    s = p.add_argument_group("search")
    s.add_argument("--granularity", default=None,
                   help="auto (default: micro for images <= 64 px, else standard), standard, micro, "
                        "or steps EMB,HEADS,QK,V,MLP such as 16,2,8,8,16")
    s.add_argument("--convention", choices=["nvit", "timm"], default="nvit",
                   help="MACs convention of --macs: nvit counts attention matmuls (default), timm linear only")
    s.add_argument("--tolerance", type=number(0, lo_open=True),
                   default=0.01, help="relative tolerance on the budget (0.01)")
    s.add_argument("--max-embed-dim", type=count(), default=2048, help="widest embedding searched (2048)")
    s.add_argument("--mlp-factor-range", default="0.5,2", metavar="LO,HI",
                   help="interval of the global MLP factor searched for a budget (0.5,2)")
    o = p.add_argument_group("output")
    o.add_argument("--name", help="name written into the config")
    o.add_argument("--out", help="write the config YAML here (atomically) instead of stdout")
    o.add_argument("--json", action="store_true", help="print JSON: config, macs, params, mlp_factor, gap, notes")
    p.set_defaults(func=run)


def _setting(args: argparse.Namespace) -> Setting:
    """The named setting with the flags given on top (validated by :class:`Setting`)."""
    over = {k: getattr(args, k) for k in ("img_size", "patch_size", "in_chans", "num_classes")
            if getattr(args, k) is not None}
    if args.distilled:
        over["distilled"] = True
    return Setting.from_dict(over, "options", base=Setting.PRESETS[args.setting])


def depth_arg(text: str) -> int | tuple[int, int]:
    """argparse type of ``--depth``: a number of blocks (``12``) or a range to search (``6:12``), each at least 1."""
    one = integer(1)
    if ":" not in text:
        return one(text)
    lo, _, hi = text.partition(":")
    low, high = one(lo), one(hi)
    if low > high:
        raise argparse.ArgumentTypeError(f"a depth range LOW:HIGH needs LOW <= HIGH, got {short(text)}")
    return low, high


def _factor_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"--mlp-factor-range must be LO,HI such as 0.5,2, got {short(text)}") from None
    if range_problem(lo, 0, lo_open=True) or range_problem(hi, 0, lo_open=True) or not lo <= hi:
        raise ConfigError(f"--mlp-factor-range must be finite positive LO <= HI, got {short(text)}")
    return lo, hi


def _load_table(spec: str) -> Any:
    """Load a latency table (a path or a shipped table's name) lazily: only the latency path needs numpy."""
    from revit.latency.table import LatencyTable, resolve_table

    return LatencyTable.load(resolve_table(spec))


def _measured(args: argparse.Namespace, solve: Any, table: Any) -> Any:
    """``--measure``: the config re-solved until it meets ``--latency-ms`` as timed (imports torch)."""
    from revit.latency.measured import ExportedTimer, fit_measured

    return fit_measured(solve, args.latency_ms / 1e3, lambda c: float(table.predict(c).total_s), ExportedTimer(table),
                        tolerance=args.measure_tolerance, max_rounds=args.measure_rounds)


def _check_combinations(args: argparse.Namespace) -> None:
    """Options that only make sense together, refused before any rule or table is read."""
    if not args.uniform and args.head_dim is not None:
        raise ConfigError("--head-dim applies to --uniform only (a rule sets its own head widths)")
    if args.table and args.latency_ms is None:
        raise ConfigError("--table is used with --latency-ms only")
    if args.measure and args.latency_ms is None:
        raise ConfigError("--measure times a config against a latency budget: give --latency-ms and --table")
    if args.mlp_factor != 1.0 and args.embed_dim is None:
        raise ConfigError("--mlp-factor applies to --embed-dim; a budget searches the factor itself "
                          "(limit it with --mlp-factor-range)")


def run(args: argparse.Namespace) -> int:
    from revit import counting
    from revit.rules import (
        GenerationBounds,
        apply_rule,
        generate,
        latency_budget,
        load_rule,
        macs_budget,
        uniform_rule,
    )

    if args.out:
        check_output_file(args.out)
    setting = _setting(args)
    _check_combinations(args)
    rule = uniform_rule(head_dim=args.head_dim or 0) if args.uniform else load_rule(args.rule)  # 0: 64 (24 micro)
    table: Any = None
    fit: Any = None

    if args.embed_dim is not None:
        if isinstance(args.depth, tuple):
            raise ConfigError("--depth LOW:HIGH searches the depth for a budget: give --macs or --latency-ms "
                              "(or one depth with --embed-dim)")
        result = apply_rule(rule, args.embed_dim, setting, granularity=args.granularity,
                            mlp_factor=args.mlp_factor, name=args.name, depth=args.depth)
    else:
        lo, hi = _factor_range(args.mlp_factor_range)
        bounds = GenerationBounds(max_embed=args.max_embed_dim, min_mlp_factor=lo, max_mlp_factor=hi,
                                  tolerance=args.tolerance)
        if args.latency_ms is not None:
            if not args.table:
                raise ConfigError("--latency-ms needs --table TABLE.json (a latency table; build one with "
                                  "`revit latency build` or use one from latency_tables/)")
            table = _load_table(args.table)
            budget = latency_budget(args.latency_ms / 1e3, table)
        else:
            budget = macs_budget(args.macs, args.convention)
        result = generate(rule, budget, setting, granularity=args.granularity, bounds=bounds, name=args.name,
                          depth=args.depth)
        if args.measure:
            counting.check_memory(result.config)
            fit = _measured(args, lambda s: generate(rule, latency_budget(s, table), setting,
                                                     granularity=args.granularity, bounds=bounds, name=args.name,
                                                     depth=args.depth),
                            table)
            result = fit.generated

    counting.check_memory(result.config)  # a width no machine here could hold (--embed-dim 1e9)
    notes = [n.text for n in result.notes]
    if table is not None:
        note = table.predict(result.config).note
        if note:
            notes.append(f"latency: {note}")
        label = getattr(table, "calibration_label", "")  # a LatencyTable; tests' stand-ins may not say
        if label:
            notes.append(f"latency table {label}")
    if args.out:  # written before anything is printed: a failed write is the only line on stderr
        result.config.save(args.out, derived=counting.derived(result.config))
    for note in notes:
        info(f"note: {note}")
    info(result.summary())
    if fit is not None:
        info(f"latency {fit.summary()}")
    if args.out:
        info(f"wrote {args.out}")
    if args.json:
        print_json({**result.to_json(), **({"measured": fit.to_json()} if fit is not None else {})})
    elif not args.out:
        print(result.config.to_yaml(derived=counting.derived(result.config)), end="")
    return 0
