"""Where the latency commands that rewrite a table write it (``calibrate``, ``smooth``, ``align``, ``transfer``),
and ``revit latency smooth`` and ``revit latency align`` themselves.  Kept apart from :mod:`revit.cli.latency`
so that module stays one page."""

from __future__ import annotations

import argparse
from typing import Any

from revit.cli._common import add_command, add_overwrite_arg, info, print_json, warn
from revit.errors import ConfigError
from revit.input_checks import check_input_file, check_output_file, count, non_negative, number, seed, short


def smoothing(text: str) -> float | str:
    """``--smooth``/``--lambda``: auto, off (0) or a strength >= 0."""
    if text in ("auto", "off"):
        return 0.0 if text == "off" else "auto"
    return number(0)(text)


def table_target(a: argparse.Namespace) -> str:
    """Where ``calibrate``, ``smooth`` and ``transfer`` write: ``--out`` (a new file, or a table with
    ``--overwrite``), else the table file the user named, in place (never a shipped table named by its name, never
    through a link)."""
    import os

    if a.out:
        check_output_file(a.out)
        if os.path.lexists(a.out) and not a.overwrite:
            raise ConfigError(f"--out {a.out}: exists; give a new file or --overwrite (a latency table only)")
        if os.path.lexists(a.out):
            from revit.latency.table import LatencyTable

            if os.path.islink(a.out):
                raise ConfigError(f"--out {a.out}: is a link; revit does not write through links")
            LatencyTable.load(a.out)  # --overwrite replaces a latency table, nothing else
        return str(a.out)
    if not os.path.isfile(a.table):
        raise ConfigError(f"{a.table} is a shipped table: give --out FILE for the calibrated copy")
    if os.path.islink(a.table):
        raise ConfigError(f"{a.table}: is a link; give --out FILE (revit does not write through links)")
    check_output_file(a.table, "TABLE")
    return str(a.table)


def register_smooth(lsub: Any) -> None:
    """``revit latency smooth``: its parser."""
    s = add_command(lsub, "smooth", "denoise a built table's grids (strength chosen by cross-validation on its "
                                    "cells); writes a new table",
                    "revit latency smooth my_table.json --out my_table_smooth.json")
    s.add_argument("table")
    s.add_argument("--out", required=True, help="the smoothed table (a new file, or a table with --overwrite)")
    add_overwrite_arg(s)
    s.add_argument("--lambda", dest="lam", type=smoothing, default="auto", metavar="auto|LAMBDA",
                   help="smoothing strength: auto (default: 5-fold cross-validation on the table's own cells, "
                        "one-standard-error rule) or a number >= 0")
    s.add_argument("--seed", type=seed(), default=0, help="the cross-validation's folds")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_smooth)


def _smooth(a: argparse.Namespace) -> int:
    from revit.latency.smoothing import describe, smooth_table
    from revit.latency.table import LatencyTable

    table = LatencyTable.load(a.table, calibrated=False)
    target = table_target(a)
    out = smooth_table(table, None if a.lam == "auto" else float(a.lam), seed=a.seed)
    out.save(target)
    rec = out.metadata["smoothing"]
    if a.json:
        print_json({"table": target, **rec})
        return 0
    for name, g in rec["grids"].items():
        info(f"  {name}: lambda {g['lambda']:g}; cells moved {g['median_change']:.1%} median, "
             f"{g['max_change']:.1%} at most")
    if table.calibrations:
        warn(f"{a.table}'s calibrations were fitted to the values before smoothing and are dropped: run "
             f"`revit latency calibrate {target}`")
    info(f"wrote {target}: {describe(out.metadata)}")
    return 0


def axis_list(text: str) -> tuple[str, ...]:
    """``--axes``: a comma-separated subset of the axes an alignment probes."""
    from revit.latency.alignment import ALIGN_AXES

    axes = tuple(dict.fromkeys(a.strip() for a in text.split(",") if a.strip()))
    bad = [a for a in axes if a not in ALIGN_AXES]
    if bad or not axes:
        raise argparse.ArgumentTypeError(f"give a comma-separated subset of {', '.join(ALIGN_AXES)}"
                                         + (f"; {short(bad[0])} is not one" if bad else ""))
    return axes


def register_align(lsub: Any) -> None:
    """``revit latency align``: its parser."""
    s = add_command(lsub, "align", "probe the widths between a table's knots on this machine (kernel steps: EMB 65 "
                                   "costs more than 64 plus an eighth) and price them so (in place, or --out)",
                    "revit latency align my_table.json   (a shipped table: --out my_copy.json)")
    s.add_argument("table")
    s.add_argument("--out", help="write the aligned table here (default: the table file itself, in place; a "
                                 "shipped table needs --out)")
    add_overwrite_arg(s)
    s.add_argument("--axes", type=axis_list, default=None, metavar="AXIS,...",
                   help="the axes probed (default: every width axis but heads); the others stay linear")
    s.add_argument("--widths", type=count(1000), default=24,
                   help="at most this many whole models per axis, straddling multiples of 4-64 (default 24)")
    s.add_argument("--random", type=non_negative(1000), default=0,
                   help="also this many uniform models of random integer widths, every axis off its steps at once in "
                        "random contexts of the others; each axis is then fitted on them too (default 0: the axis "
                        "probes alone)")
    s.add_argument("--passes", type=count(100), default=10, help="passes over the models, each in random order")
    s.add_argument("--seed", type=seed(), default=0, help="the order of each pass and the random models")
    s.add_argument("--probe", metavar="ALIGN.json",
                   help="fit on the probe an earlier `revit latency align --json` printed (its models' widths and "
                        "times) instead of timing models again: a re-fit in seconds, e.g. of a rebuilt table on the "
                        "machine the probe was timed on; --widths, --random, --passes and --seed are then the "
                        "probe's own)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_align)


def _align(a: argparse.Namespace) -> int:
    import time

    from revit.latency.accuracy import backend_for_table
    from revit.latency.alignment import ALIGN_AXES, RANDOM, align_table, describe, probe, probe_cell
    from revit.latency.table import LatencyTable

    table = LatencyTable.load(a.table, calibrated=False)
    target = table_target(a)
    t0 = time.perf_counter()
    cell = probe_cell(table)  # the widths the axis probes hold
    if a.probe:
        from revit._io import load_json
        from revit.latency.alignment import probed_from_dict

        doc = load_json(check_input_file(a.probe, "--probe"))
        probed = probed_from_dict(doc, a.probe)
        if a.axes:
            probed = {k: v for k, v in probed.items() if k in a.axes or k == RANDOM}
        old: dict[str, Any] = dict(doc["settings"]) if isinstance(doc.get("settings"), dict) else {}
        if old.get("cell", cell) != cell:
            raise ConfigError(f"--probe {a.probe}: its models were timed around widths {old['cell']}, this "
                              f"table's reference cell is {cell}; probe this table (without --probe)")
        settings = {**old, "axes": [k for k in probed if k != RANDOM], "probe_file": str(a.probe), "cell": cell}
    else:
        backend = backend_for_table(table)
        axes = a.axes or ALIGN_AXES
        probed = probe(table, backend, widths=a.widths, passes=a.passes, seed=a.seed, axes=axes, random=a.random,
                       progress=not a.no_progress)
        settings = {"axes": list(axes), "widths": a.widths, "random": a.random, "passes": a.passes, "seed": a.seed,
                    "seconds": round(time.perf_counter() - t0, 1), "device": backend.info()["device"], "cell": cell}
    seconds = round(time.perf_counter() - t0, 1)
    out = align_table(table, probed, settings=settings)
    out.save(target)
    rec = out.metadata["alignment"]
    if a.json:
        print_json({"table": target, **rec, "probe": probed})
        return 0
    for axis, f in rec["axes"].items():
        verdict = "linear (no clear step)"
        if f["kept"]:
            off = f", +{f['remainder']:.0%} off it" if f["remainder"] else ""
            verdict = f"step {f['quantum']}, alpha {f['alpha']:g}{off}"
        info(f"  {axis}: {verdict}; error {f['error_linear']:.2%} linear, {f['error_warped']:.2%} warped; left "
             f"out one at a time {f['cv_linear']:.2%} -> {f['cv_warped']:.2%} ({f['widths']} models"
             f"{' + ' + str(f['random']) + ' random' if f.get('random') else ''})")
    if table.calibrations and not out.calibrations:
        warn(f"{a.table}'s calibrations were fitted to the predictions before aligning and are dropped: run "
             f"`revit latency calibrate {target}`")
    info(f"wrote {target}: {describe(out.metadata)}; {seconds:.0f} s")
    return 0
