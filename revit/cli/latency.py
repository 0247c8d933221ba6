"""``revit latency build | import-nvit | query | validate | calibrate | smooth | transfer | room | backends``: latency
tables, by command.

``query`` stays torch-free (table + presets only); ``build``, ``validate`` and ``calibrate`` import the backend.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from revit.cli._common import (
    add_command,
    add_option_flags,
    add_overwrite_arg,
    catalogue_json,
    catalogue_lines,
    defer_arguments,
    given_options,
    info,
    print_json,
    warn,
)
from revit.cli._tables import register_align, register_smooth, smoothing, table_target
from revit.errors import ConfigError
from revit.input_checks import MAX_BATCH, check_output_file, count, non_negative, number, seed, short, threads
from revit.registry import lazy_choices


def _register_build(lsub: Any) -> None:
    """``revit latency build`` and its options."""
    b = add_command(lsub, "build", "measure a latency table on this machine (resumable)",
                    "revit latency build --backend onnxruntime --preset micro --batch 64 "
                    "--out latency_tables/cpu_onnxruntime_fp32_bs64_t17.json")
    b.add_argument("--backend", default="onnxruntime", choices=lazy_choices("revit.latency.backends", "BACKENDS"),
                   metavar="NAME", help="latency backend: %(choices)s (default %(default)s; an installed package "
                                        "adds more through the revit.backends entry point group)")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, help="preset space: micro or deit (default micro)")
    src.add_argument("--space", default=None, help="a space YAML (schema revit/latency-space/v1)")
    b.add_argument("--batch", type=count(MAX_BATCH), default=64,
                   help=f"batch size the table is measured at (default 64, at most {MAX_BATCH})")
    b.add_argument("--out", required=True, help="output table JSON")
    b.add_argument("--resume", action="store_true", help="continue an interrupted build from OUT.journal.jsonl")
    add_overwrite_arg(b)
    b.add_argument("--device", default=None, help="cpu, cuda, or tensorrt (onnxruntime's provider); default: the "
                                                  "backend's own (cpu, cuda for GPU-only backends)")
    b.add_argument("--dtype", default="fp32", help="fp32 (default) or fp16 (tensorrt, torch on cuda)")
    b.add_argument("--threads", type=threads(), default=1,
                   help="intra-op threads (default 1: steadiest on shared CPUs)")
    b.add_argument("--clock", default="auto", choices=("auto", "wall", "thread"),
                   help="auto: the backend's choice (onnxruntime: thread CPU time on cpu with 1 thread), "
                        "else wall clock")
    b.add_argument("--design", default="auto", choices=("auto", "full", "additive"),  # profiler.DESIGNS (light import)
                   help="sparse grid from pilot sweeps (auto), every cell (full), or the two halves on dense knots "
                        "summed with a measured join (additive; cells grow as a sum, not a product)")
    b.add_argument("--max-cells", type=count(), default=937, help="cell budget (default 937 = NViT's 9,375 / 10)")
    b.add_argument("--tol", type=number(0, lo_open=True),
                   default=0.01, help="target relative interpolation error of the knots")
    b.add_argument("--knots", action="append", default=[], metavar="AXIS=V,V,...",
                   help="force these knots on an axis (added to the auto design's; repeatable), e.g. "
                        "embed_dim=32,40,48 where the device bends between the pilot's sweeps")
    b.add_argument("--half-knots", action="append", default=[], metavar="AXIS=V,V,...",
                   help="extra knots for the half blocks only (a block without attention or MLP; repeatable), "
                        "e.g. mlp_dim=8,16,24: a half is cheap, so its axes can be dense")
    b.add_argument("--smooth", type=smoothing, default="auto", metavar="auto|off|LAMBDA",
                   help="denoise the finished grids: auto (default; the strength chosen by cross-validation on the "
                        "build's own cells), off, or a strength >= 0 (see `revit latency smooth`)")
    b.add_argument("--warmup", type=non_negative(10_000), default=2)
    b.add_argument("--repeats", type=count(10_000), default=5)
    b.add_argument("--passes", type=count(1_000), default=3, help="passes over all cells, each in random order")
    b.add_argument("--no-reference", action="store_true",
                   help="do not normalise by a reference block timed around each measurement")
    b.add_argument("--seed", type=seed(), default=0)
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=_build)
    # each backend's own options (--graph, --compile, a plug-in's), read from the backends when this command runs
    defer_arguments(b, lambda p: add_option_flags(p, "revit.latency.backends", "BACKENDS", "--backend"))


def register(sub: Any) -> None:
    p = sub.add_parser(__name__.rpartition(".")[2], help="build, import, query and validate latency tables",
                       description="Latency tables: one block's latency on a grid, whole-model prediction.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  revit latency query latency_tables/cpu_onnxruntime_fp32_bs64_t17.json "
                              "revit_micro --savings")
    lsub = p.add_subparsers(dest="latency_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(sys.stderr), 2)[1])

    _register_build(lsub)

    ls = add_command(lsub, "backends", "list the latency backends (built-in and installed), their options and "
                                       "broken plug-ins", "revit latency backends --json")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_backends)

    i = add_command(lsub, "import-nvit", "convert NViT's latency_head.json into a revit table",
                    "revit latency import-nvit shared/nvit/latency_head.json "
                    "--out latency_tables/v100_nvit_bs256_t198.json")
    i.add_argument("file")
    i.add_argument("--out", required=True)
    i.set_defaults(func=_import)

    q = add_command(lsub, "query", "predicted latency of a model, with its per-block breakdown",
                    "revit latency query latency_tables/cpu_onnxruntime_fp32_bs64_t17.json revit_micro")
    q.add_argument("table")
    q.add_argument("model", help="preset name or config YAML")
    q.add_argument("--extrapolate", action="store_true", help="allow queries outside the measured range")
    q.add_argument("--savings", action="store_true", help="also print the marginal saving per unit in each block")
    q.add_argument("--json", action="store_true")
    q.add_argument("--out", help="write the output (text, or JSON with --json) to this file, atomically")
    q.set_defaults(func=_query)

    _register_validate(lsub)

    _register_calibrate(lsub)

    register_smooth(lsub)

    register_align(lsub)

    _register_transfer(lsub)

    _register_room(lsub)


def _register_validate(lsub: Any) -> None:
    """``revit latency validate``: its parser."""
    v = add_command(lsub, "validate", "measure random whole models and compare with the table's predictions",
                    "revit latency validate latency_tables/cpu_onnxruntime_fp32_bs64_t17.json --samples 50")
    v.add_argument("table")
    v.add_argument("--samples", type=count(100_000), default=20,
                   help="random whole models measured (at most 100000)")
    v.add_argument("--noise-k", type=non_negative(),
                   default=10, help="copies of one config measured for the noise floor")
    v.add_argument("--seed", type=seed(), default=1)
    v.add_argument("--model-source", default=None, choices=("exported", "graph", "revit-models"),
                   help="exported (default where the backend runs ONNX files): revit's model through torch.onnx, "
                        "as a user deploys it; graph: the backend's own synthetic whole-model graph; "
                        "revit-models: the old name of exported")
    v.add_argument("--json", action="store_true")
    v.add_argument("--no-progress", action="store_true")
    v.set_defaults(func=_validate)


def _register_calibrate(lsub: Any) -> None:
    """``revit latency calibrate``: its parser (kept apart so each register function stays short)."""
    c = add_command(lsub, "calibrate", "scale a table to this machine now, from a few whole models timed (~1 min)",
                    "revit latency calibrate my_table.json   (a shipped table: --out my_copy.json)")
    c.add_argument("table")
    c.add_argument("--out", help="write the calibrated table here (default: the table file itself, in place; "
                                 "a shipped table needs --out)")
    add_overwrite_arg(c)
    c.add_argument("--models", type=count(50), default=5, help="whole models timed (default 5, at most 50)")
    c.add_argument("--passes", type=count(100), default=5, help="passes over the models, each in random order")
    c.add_argument("--source", default=None, choices=("exported", "graph"),
                   help="exported: torch.onnx files as a user deploys them (default where the backend runs ONNX "
                        "files); graph: the backend's own whole-model graph")
    c.add_argument("--seed", type=seed(), default=0)
    c.add_argument("--json", action="store_true")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=_calibrate)


def _register_transfer(lsub: Any) -> None:
    """``revit latency transfer``: its parser."""
    from revit.latency.transfer import MAX_CONFIGS

    t = add_command(lsub, "transfer", "a table for another thread count or batch size (a proxy for another "
                                      f"device) from at most {MAX_CONFIGS} whole models timed in it",
                    "revit latency transfer cpu_onnxruntime_fp32_bs64_t17 --threads 2 --configs 10 --out t2.json")
    t.add_argument("table")
    t.add_argument("--threads", type=threads(), help="intra-op threads of the new setting (default: the table's)")
    t.add_argument("--batch", type=count(MAX_BATCH), help="batch size of the new setting (default: the table's)")
    t.add_argument("--configs", type=int, default=MAX_CONFIGS,
                   help=f"whole models timed in the new setting (default and most {MAX_CONFIGS}; at least the "
                        "fit's parameters: 4, or 3 for a v1 table)")
    t.add_argument("--out", required=True, help="the new table (a new file, or a table with --overwrite)")
    add_overwrite_arg(t)
    t.add_argument("--passes", type=count(100), default=3, help="passes over the models, each in random order")
    t.add_argument("--source", default=None, choices=("exported", "graph"),
                   help="exported: torch.onnx files (default where the backend runs ONNX files); graph: the "
                        "backend's own whole-model graph")
    t.add_argument("--evaluate", metavar="FULL.json",
                   help="a table built in the new setting: report the transferred table's MAPE against it")
    t.add_argument("--eval-samples", type=count(100_000), default=200,
                   help="held-out random configs of --evaluate (default 200)")
    t.add_argument("--seed", type=seed(), default=0)
    t.add_argument("--json", action="store_true")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_transfer)


def _register_room(lsub: Any) -> None:
    """``revit latency room``: its parser."""
    r = add_command(lsub, "room", "the room for latency-awareness: at equal MACs, how far apart attention- and "
                                  "MLP-heavy configs are, predicted (and measured)",
                    "revit latency room cpu_onnxruntime_fp32_bs64_t17 --groups 20")
    r.add_argument("table")
    r.add_argument("--groups", type=count(1_000), default=20, help="pairs of configs at equal MACs (default 20)")
    r.add_argument("--measure", action="store_true", help="also time the pairs as whole models on this machine")
    r.add_argument("--passes", type=count(100), default=3, help="passes over the models with --measure")
    r.add_argument("--source", default=None, choices=("exported", "graph"),
                   help="with --measure: exported (torch.onnx files, the default where the backend runs ONNX "
                        "files) or graph (the backend's own whole-model graph)")
    r.add_argument("--seed", type=seed(), default=0)
    r.add_argument("--json", action="store_true")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=_room)


def _make_backend(a: argparse.Namespace) -> Any:
    """The backend of ``--backend`` with the options it declares (its defaults, and the flags given); a backend
    flag given to a backend that does not take it is refused, naming the backends that do."""
    from revit.latency.backends import BACKENDS

    cls = BACKENDS.get(a.backend)
    opts = given_options(a, cls, BACKENDS, "--backend", f"backend {a.backend!r}")
    device = a.device or cls.default_device
    clock = cls.default_clock(device, a.threads) if a.clock == "auto" else a.clock
    return cls(device=device, dtype=a.dtype, threads=a.threads, clock=clock, **opts)


def _backends(a: argparse.Namespace) -> int:
    from revit.latency.backends import BACKENDS

    if a.json:
        print_json(catalogue_json(BACKENDS))
    else:
        sys.stdout.write("".join(f"{line}\n" for line in catalogue_lines(BACKENDS)))
    return 0


def _parse_knots(items: list[str], flag: str = "--knots") -> dict[str, tuple[int, ...]]:
    """``["embed_dim=32,40", "heads=2"]`` -> {"embed_dim": (32, 40), "heads": (2,)}; bad text is one line."""
    out: dict[str, tuple[int, ...]] = {}
    for item in items:
        axis, eq, vals = item.partition("=")
        try:
            values = tuple(int(v) for v in vals.split(",") if v.strip())
        except ValueError:
            values = ()
        if not eq or not values:
            raise ConfigError(f"{flag}: {short(item)} is not AXIS=V,V,... with integer values")
        out[axis.strip()] = tuple(sorted(set(out.get(axis.strip(), ())) | set(values)))
    return out


def _build(a: argparse.Namespace) -> int:
    from revit.latency.grid import check_grid_memory, get_grid
    from revit.latency.profiler import BuildSettings, build_table, check_cell_budget, claim_build

    claim_build(a.out, resume=a.resume, overwrite=a.overwrite)  # a run of another kind is named first
    check_output_file(a.out)
    grid = get_grid(a.space or a.preset or "micro")
    backend = _make_backend(a)
    settings = BuildSettings(batch=a.batch, warmup=a.warmup, repeats=a.repeats, passes=a.passes, design=a.design,
                             max_cells=a.max_cells, tol=a.tol, seed=a.seed, reference=not a.no_reference,
                             knots=_parse_knots(a.knots), half_knots=_parse_knots(a.half_knots, "--half-knots"),
                             smooth=a.smooth)
    settings.check()  # every refusal comes before the journal is created
    check_cell_budget(grid, settings)
    check_grid_memory(grid, a.batch)
    table = build_table(grid, backend, a.out, settings, resume=a.resume, overwrite=a.overwrite,
                        progress=not a.no_progress)
    d = table.metadata["design"]
    info(f"wrote {a.out}: {table.summary()}")
    info(f"cells measured {d['cells_measured']} ({d['ratio_to_nvit']:.1%} of NViT's 9,375; "
         f"{d['ratio_to_full_grid']:.2%} of the full {d['full_grid_cells']}-cell grid), "
         f"measurement time {d['build_time_s']:.0f} s")
    check = d.get("additive_check")
    if check and check.get("median_abs") is not None:
        info(f"additive check (attention half + MLP half + join against {check['cells']} whole blocks measured on "
             f"the knots): median {check['median_abs']:.1%}, worst {check['max_abs']:.1%}")
    return 0


def _import(a: argparse.Namespace) -> int:
    from revit.latency.nvit import import_nvit

    check_output_file(a.out)
    table = import_nvit(a.file)
    table.save(a.out)
    info(f"wrote {a.out}: {table.summary()}")
    info(f"note: {table.fixed_note}")
    return 0


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f} ms"


def _query(a: argparse.Namespace) -> int:
    from revit._io import atomic_write_text, dumps_json
    from revit.latency.table import LatencyTable
    from revit.presets import resolve_config

    if a.out:
        check_output_file(a.out)
    table = LatencyTable.load(a.table)
    cfg = resolve_config(a.model)
    pred = table.predict(cfg, extrapolate=a.extrapolate)
    savings = [table.marginal_savings(cfg, i, extrapolate=a.extrapolate) for i in range(cfg.depth)] \
        if a.savings else None
    if a.json:
        out: dict[str, Any] = {"table": table.source, "model": a.model, **pred.to_dict()}
        if savings is not None:
            out["marginal_savings_s"] = savings
        text = dumps_json(out, "the prediction", indent=2) + "\n"
    else:
        text = "".join(f"{line}\n" for line in _query_lines(table, cfg, a.model, pred, savings))
    if a.out:
        atomic_write_text(a.out, text)
        info(f"wrote {a.out}")
    else:
        sys.stdout.write(text)
    return 0


def _query_lines(table: Any, cfg: Any, model: str, pred: Any, savings: list[dict[str, float]] | None) -> list[str]:
    """The human-readable answer of ``latency query``."""
    lines = [f"table: {table.summary()}",
             f"model: {cfg.name or model} (embed {cfg.embed_dim}, {cfg.depth} blocks, {cfg.tokens} tokens)"]
    fixed = _ms(pred.fixed_s) if pred.fixed_s is not None else "unknown"
    lines.append(f"predicted: {_ms(pred.total_s)} per batch of {pred.batch_size} ({_ms(pred.per_image_s)} per "
                 f"image); blocks {_ms(pred.blocks_s)}, fixed parts {fixed}")
    lines.append(f"calibration: {table.calibration_label}")
    off = table.off_grid(cfg)
    if off:
        steps = (f"priced past the kernel steps the table's alignment found ({', '.join(table.warps)})"
                 if table.warps else "a backend may run them slower than the grid's neighbours (`revit latency "
                                     "align` prices such steps)")
        lines.append(f"note: widths off the table's grid ({'; '.join(off)}) are interpolated, {steps}; round them "
                     f"to the grid to deploy what the table measured")
    if not pred.fixed_known:
        lines.append(f"note: {pred.note}")
    for i, (b, s) in enumerate(zip(cfg.blocks, pred.per_block_s, strict=True)):
        line = f"  block {i:2d}: heads {b.heads:3d} qk {b.qk_dim:3d} v {b.v_dim:3d} mlp {b.mlp_dim:5d}  {_ms(s)}"
        if savings is not None:
            line += "  saving/unit: " + " ".join(f"{k} {v * 1e3:.3g} ms" for k, v in savings[i].items()
                                                 if k != "embed_dim")
        lines.append(line)
    if savings is not None:
        lines.append(f"  embed_dim saving/unit (all blocks): {savings[0]['embed_dim'] * 1e3:.3g} ms  "
                     "(negative savings clipped at 0)")
    return lines


def _validate(a: argparse.Namespace) -> int:
    from revit._io import dumps_json
    from revit.latency.accuracy import backend_for_table, check_validation_memory, validate
    from revit.latency.table import LatencyTable

    table = LatencyTable.load(a.table)
    check_validation_memory(table, a.samples, a.noise_k)  # every model is built before timing starts
    m = table.metadata
    backend = backend_for_table(table)
    here = backend.info()
    if here["device"] != m["device"] or here["backend_version"] != m["backend_version"]:
        warn(f"table measured on {m['device']} / {m['backend']} {m['backend_version']}, "
             f"validating on {here['device']} / {here['backend_version']}")
    r = validate(table, backend, a.samples, seed=a.seed, noise_k=a.noise_k, model_source=a.model_source,
                 progress=not a.no_progress)
    report = dumps_json(r.to_dict(), "the validation report", indent=2)  # finite, or refused (MAPE inf%)
    if a.json:
        sys.stdout.write(report + "\n")
        return 0
    what = "exported with torch.onnx" if r.model_source == "exported" else "the backend's synthetic graph"
    lines = [f"table: {table.summary()}", f"calibration: {table.calibration_label}", f"whole models: {what}"]
    for c, p, me in zip(r.configs, r.predicted, r.measured, strict=True):
        lines.append(f"  embed {c.embed_dim:4d}  predicted {_ms(p)}  measured {_ms(me)}  error {(p - me) / me:+.1%}")
    floor = "n/a" if r.noise_floor is None else f"{r.noise_floor:.2%}"
    lines.append(f"{len(r.configs)} configs: MAPE {r.mape:.2%}, worst {r.worst:.2%}, bias {r.bias:+.2%}; "
                 f"noise floor (one config x {len(r.noise_measurements)}) {floor}")
    if r.normalised:
        raw_floor = "n/a" if r.raw_noise_floor is None else f"{r.raw_noise_floor:.2%}"
        lines.append(f"(load-normalised by the table's reference block; raw: MAPE {r.raw_mape:.2%}, "
                     f"noise floor {raw_floor})")
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0



def _calibrate(a: argparse.Namespace) -> int:
    from revit.latency.accuracy import backend_for_table
    from revit.latency.calibration import calibrate, shape_warning
    from revit.latency.table import LatencyTable

    table = LatencyTable.load(a.table)
    target = table_target(a)
    backend = backend_for_table(table)
    cal = calibrate(table, backend, models=a.models, passes=a.passes, seed=a.seed, source=a.source,
                    progress=not a.no_progress)
    table.with_calibration(cal).save(target)
    if cal.load_average > 1.5:
        warn(f"load average {cal.load_average:.2f} while calibrating: the scale includes that load; calibrate "
             "an idle machine for figures that hold when it is idle")
    shape = shape_warning(table.metadata, cal)
    if shape:
        warn(shape)
    if a.json:
        print_json({"table": target, **cal.to_dict(), "spread": cal.spread, "shape_warning": shape})
        return 0
    for m in cal.models:
        info(f"  embed {m.embed_dim:4d}, {m.depth} blocks: table {_ms(m.predicted_s)}, measured {_ms(m.measured_s)} "
             f"(x{m.ratio:.3f})")
    ref = "" if cal.reference_ratio is None else f"; reference block x{cal.reference_ratio:.3f} of its build median"
    sign = "-" if cal.offset_s < 0 else "+"
    info(f"fit: x{cal.scale:.3f} {sign} {1e3 * abs(cal.offset_s):.3f} ms per model (models within "
         f"{cal.spread:.1%} of it){ref}; {cal.seconds:.0f} s")
    info(f"wrote {target}: {cal.label}")
    return 0


def _transfer(a: argparse.Namespace) -> int:
    from revit.latency.accuracy import backend_for_table
    from revit.latency.table import LatencyTable
    from revit.latency.transfer import check_models, check_new_setting, evaluate, setting_of_table, transfer

    table = LatencyTable.load(a.table)
    old = setting_of_table(table)
    new = {"batch_size": a.batch or old["batch_size"], "threads": a.threads or old["threads"]}
    check_models(table, a.configs)  # every refusal before anything is timed
    target = table_target(a)
    full = LatencyTable.load(a.evaluate) if a.evaluate else None
    backend = backend_for_table(table, threads=new["threads"])
    check_new_setting(table, new, backend.info().get("device"))  # the same setting is a transfer on another device
    out = transfer(table, backend, new, configs=a.configs, passes=a.passes, seed=a.seed, source=a.source,
                   progress=not a.no_progress)
    ev = evaluate(out, full, a.eval_samples, seed=a.seed + 7) if full is not None else None
    out.save(target)
    rec = out.metadata["transfer"]
    if a.json:
        print_json({"table": target, "transfer": rec, "evaluation": ev})
        return 0
    info(f"timed {len(rec['configs'])} {rec['model_source']} models at batch {new['batch_size']}, "
         f"{new['threads']} thread(s) in {rec['seconds']:.0f} s (load {rec['load_average']:.2f})")
    info("fit: " + ", ".join(f"{k} {1e3 * v:.3f} ms" if k == "offset_s" else f"{k} x{v:.3f}"
                             for k, v in rec["fit"].items())
         + f"; residuals MAPE {rec['residuals']['mape']:.2%}, worst {rec['residuals']['worst']:.2%}")
    if ev is not None:
        info(f"against {ev['full']} on {ev['samples']} held-out configs: MAPE {ev['mape']:.2%} (worst "
             f"{ev['worst']:.2%}); shape MAPE {ev['shape_mape']:.2%} after a common x{ev['common_scale']:.3f}")
    info(f"wrote {target}")
    return 0


def _room(a: argparse.Namespace) -> int:
    from revit.latency.accuracy import backend_for_table
    from revit.latency.room import room
    from revit.latency.table import LatencyTable

    table = LatencyTable.load(a.table)
    backend = backend_for_table(table) if a.measure else None
    r = room(table, a.groups, seed=a.seed, backend=backend, passes=a.passes, source=a.source,
             progress=not a.no_progress)
    if a.json:
        print_json(r.to_dict())
        return 0
    lines = [f"table: {table.summary()}", f"calibration: {table.calibration_label}"]
    for g in r.groups:
        b, c = g.attention.blocks[0], g.mlp.blocks[0]
        line = (f"  embed {g.attention.embed_dim:4d}: attention-heavy {b.heads}x{b.qk_dim}/{b.v_dim} mlp {b.mlp_dim} "
                f"vs MLP-heavy {c.heads}x{c.qk_dim}/{c.v_dim} mlp {c.mlp_dim}: predicted {_ms(g.predicted[0])} vs "
                f"{_ms(g.predicted[1])}")
        if g.measured is not None:
            line += f", measured {_ms(g.measured[0])} vs {_ms(g.measured[1])}"
        lines.append(line)
    for which in ("predicted", "measured"):
        s = r.summary(which)
        if s is not None:
            lines.append(f"{which} room at equal MACs (within 1%): median {s['median']:.1%}, max {s['max']:.1%} "
                         f"over {s['groups']} groups; attention-heavy slower in {s['attention_heavy_slower']}")
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0
