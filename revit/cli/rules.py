"""``revit rules``: list and show design rules, and fit a rule family to pruning traces.

``list`` and ``show`` stay light; ``fit`` imports numpy/scipy (and matplotlib for its plot).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from revit.cli._common import add_command, info, print_json
from revit.errors import ConfigError
from revit.input_checks import check_number, check_output_file, count, fraction, non_negative, seed, short


def register(sub: Any) -> None:
    p = add_command(sub, "rules", "list, show and fit design rules (rule families over depth)",
                    "revit rules fit runs/micro/trace.jsonl --family less-more-less --at-ratio 0.5 "
                    "--out rules/micro-fit.yaml")
    rs = p.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")

    ls = add_command(rs, "list", "list the shipped rules and the rule families", "revit rules list")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)

    sh = add_command(rs, "show", "print a rule (YAML) and its widths at one embedding width",
                     "revit rules show paper --embed-dim 384")
    sh.add_argument("rule", help="shipped rule name, uniform, or a rule YAML path")
    sh.add_argument("--embed-dim", type=count(), default=384, help="width at which to print the blocks (384)")
    sh.add_argument("--depth", type=count(), default=None, help="depth (default: the rule's, else 12)")
    sh.set_defaults(func=run_show)

    fit = add_command(rs, "fit", "fit a rule family to the widths of pruning traces (or of another rule)",
                      "revit rules fit runs/micro/trace.jsonl --family less-more-less --at-ratio 0.5 "
                      "--out rules/micro-fit.yaml")
    fit.add_argument("traces", nargs="*", help="trace.jsonl files written by `revit prune`")
    fit.add_argument("--to-rule", metavar="R",
                     help="fit to another rule's widths instead of traces (e.g. paper: the nearest member)")
    fit.add_argument("--embed-dims", default="192,256,384,512,768",
                     help="with --to-rule: embedding widths at which the rule is read (192,256,384,512,768)")
    fit.add_argument("--depth", type=count(), default=12, help="with --to-rule: depth at which the rule is read (12)")
    fit.add_argument("--family", default="less-more-less", help="family to fit (default less-more-less)")
    at = fit.add_mutually_exclusive_group()
    at.add_argument("--at-ratio", type=fraction(hi_open=False),
                    help="read each trace at the first step with MACs <= R x base")
    at.add_argument("--at-latency-ratio", type=fraction(hi_open=False),
                    help="read at the first step with latency <= R x base")
    at.add_argument("--at-step", type=non_negative(), help="read at this step number (default: the last step)")
    fit.add_argument("--fix", action="append", default=[], metavar="NAME=VALUE",
                     help="hold a parameter fixed (repeatable), e.g. --fix v_end=1")
    fit.add_argument("--bootstrap", type=non_negative(100_000), metavar="N",
                     help="resamples for 95%% percentile intervals per parameter and the non-monotone test "
                          "(default: 200 with traces, 0 = none with --to-rule)")
    fit.add_argument("--bootstrap-unit", default="auto", choices=("auto", "blocks", "traces", "traces+blocks"),
                     help="what is resampled: blocks within each region, whole traces, or both "
                          "(auto: traces+blocks with several traces, blocks with one)")
    fit.add_argument("--seed", type=seed(), default=0, help="seed of the bootstrap resamples (0)")
    fit.add_argument("--name", help="name of the fitted rule (default: the output file's stem)")
    fit.add_argument("--description", help="one-line description written into the rule")
    fit.add_argument("--out", help="write the fitted rule YAML here (default: stdout)")
    fit.add_argument("--plot", help="PNG of the fitted profile against the observed widths "
                                    "(default: next to --out, same stem)")
    fit.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    fit.add_argument("--json", action="store_true", help="print the fit report as JSON on stdout")
    fit.set_defaults(func=run_fit)
    p.set_defaults(func=lambda args: _need_sub(p))


def _need_sub(p: argparse.ArgumentParser) -> int:
    raise ConfigError("revit rules needs a subcommand: list, show or fit (see revit rules --help)")


def run_list(args: argparse.Namespace) -> int:
    from revit.rules import FAMILIES, family_rules, load_rule, shipped_rules

    rows: list[dict[str, Any]] = []
    for name, path in shipped_rules().items():
        rule = load_rule(str(path))
        rows.append({"name": name, "family": rule.family, "path": str(path), "description": rule.description})
    for name, rule in family_rules().items():  # shipped by a family (uniform, a plugin's): no file
        if name not in shipped_rules():
            rows.append({"name": name, "family": rule.family, "path": None, "description": rule.description})
    fams = [{"family": n, "fittable": f().fittable, "description": f.description, "depth": f.depth_doc,
             "params": list(f.params)}
            for n, f in FAMILIES.loaded().items()]
    broken = [{"family": n, "error": line} for n, line in FAMILIES.broken().items()]  # plug-ins that fail alone
    if args.json:
        print_json({"rules": rows, "families": fams, "broken": broken})
        return 0
    print("shipped rules:")
    for r in rows:
        print(f"  {r['name']:16s} family {r['family']:15s} {r['path'] or '(named by its family)'}")
    print("rule families:")
    for f in fams:
        print(f"  {f['family']:16s} {'fittable' if f['fittable'] else 'fixed   '}  {f['description']}")
    for b in broken:
        print(f"  {b['family']:16s} broken    {b['error']}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from revit import counting
    from revit.rules import Setting, apply_rule, load_rule

    rule = load_rule(args.rule)
    depth = args.depth if args.depth is not None else (rule.depth or 12)
    g = apply_rule(rule, args.embed_dim, Setting(depth=depth))
    print(rule.to_yaml(), end="")
    print(f"# at EMB {args.embed_dim}, depth {depth} (ImageNet 224/16): "
          f"{counting.format_count(counting.macs(g.config))} MACs, "
          f"{counting.format_count(counting.params(g.config))} params")
    for i, b in enumerate(g.config.blocks):
        print(f"#   block {i:2d}: heads {b.heads:3d}  qk {b.qk_dim:4d}  v {b.v_dim:4d}  mlp {b.mlp_dim:5d}")
    for note in g.notes:
        info(f"note: {note}")
    return 0


def _parse_fix(items: list[str]) -> dict[str, float]:
    out = {}
    for it in items:
        key, sep, val = it.partition("=")
        try:
            if not sep:
                raise ValueError
            out[key.strip()] = check_number(float(val), f"--fix {key.strip()}")
        except ValueError:
            raise ConfigError(f"--fix expects NAME=VALUE such as v_end=1, got {short(it)}") from None
    return out


def _embed_dims(text: str) -> list[int]:
    try:
        dims = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--embed-dims must be integers separated by commas, got {short(text)}") from None
    if not dims or min(dims) < 1:
        raise ConfigError(f"--embed-dims must be positive integers, got {short(text)}")
    return dims


def run_fit(args: argparse.Namespace) -> int:
    from revit.rules import FAMILIES, load_rule
    from revit.rules.fit import (
        bootstrap_fit,
        fit_family,
        plot_fit,
        samples_from_rule,
        samples_from_traces,
        with_bootstrap,
    )

    FAMILIES.get(args.family)  # unknown family: one line listing the known ones
    for path, flag in ((args.out, "--out"), (None if args.no_plot else args.plot, "--plot")):
        if path:
            check_output_file(path, flag)
    if args.to_rule and args.traces:
        raise ConfigError("give traces or --to-rule, not both")
    if args.to_rule:
        if any(x is not None for x in (args.at_ratio, args.at_latency_ratio, args.at_step)):
            raise ConfigError("--at-ratio/--at-latency-ratio/--at-step read traces; not used with --to-rule")
        src = load_rule(args.to_rule)
        samples = samples_from_rule(src, _embed_dims(args.embed_dims), args.depth)
        prov: dict[str, Any] = {"fitted_to": f"rule {src.name} at EMB {args.embed_dims}, depth {args.depth}"}
    elif args.traces:
        samples = samples_from_traces(args.traces, at_ratio=args.at_ratio, at_latency_ratio=args.at_latency_ratio,
                                      at_step=args.at_step)
        prov = {"fitted_to": "traces", "at_ratio": args.at_ratio, "at_latency_ratio": args.at_latency_ratio,
                "at_step": args.at_step}
    else:
        raise ConfigError("nothing to fit: give trace files (revit prune writes RUN_DIR/trace.jsonl) or --to-rule R")
    name = args.name or (Path(args.out).stem if args.out else None)
    result = fit_family(args.family, samples, name=name, fixed=_parse_fix(args.fix), provenance=prov,
                        description=args.description)
    n_boot = args.bootstrap if args.bootstrap is not None else (0 if args.to_rule else 200)
    boot = None
    if n_boot:
        boot = bootstrap_fit(result, n=n_boot, seed=args.seed, unit=args.bootstrap_unit)
        result = with_bootstrap(result, boot)
    if args.out:  # written before anything is printed: a failed write is the only line on stderr
        result.rule.save(args.out)
    for line in result.summary_lines() + (boot.summary_lines() if boot else []):
        info(line)
    if args.out:
        info(f"wrote {args.out}")
    plot = args.plot or (str(Path(args.out).with_suffix(".png")) if args.out else None)
    if plot and not args.no_plot:
        plot_fit(result, plot, boot=boot)
        info(f"wrote {plot}")
    if args.json:
        print_json({"rule": result.rule.to_dict(), "r2": result.r2, "rmse": result.rmse, "max_abs": result.max_abs,
                    "residuals": result.residuals, "bootstrap": boot.to_dict() if boot else None})
    elif not args.out:
        print(result.rule.to_yaml(), end="")
    return 0
