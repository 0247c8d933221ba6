"""Do widths off the table's knots cost what the table interpolates?  Whole exported models, one axis at a time.

A table measures knots (the micro table: EMB every 8, QK/V 4/12/24, MLP every 32) and interpolates between them;
Torch-Pruning and other pruners leave widths such as EMB 71 or QK 21.  This times uniform models that differ
from an aligned one (EMB 72, 4 heads, QK/V 24, MLP 216 by default) in one width at a time, over a run of
consecutive values, whole (exported with ``torch.onnx``, the table's protocol, interleaved), and prints each one's
measured latency over the aligned model's next to the table's ratio: a width that costs more than its
interpolation shows as a positive excess, and its pattern over ``width mod 8`` says what alignment the kernels
want.

Usage (idle machine):
    PYTHONPATH=. python benchmarks/width_alignment.py --table cpu_onnxruntime_fp32_bs64_t17 --passes 10 \\
        --out benchmarks/results/width_alignment_micro.json
    PYTHONPATH=. python benchmarks/width_alignment.py --passes 10 --spans embed_dim=32-35,46-51,62-66,78-82,96
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def variants(base: Any, anchor: dict[str, int], spans: dict[str, range]) -> list[tuple[str, int, Any]]:
    """(axis, width, config): the anchor config with one width changed, for each width of each span."""
    from revit.config import BlockDims

    out = []
    for axis, span in spans.items():
        for w in span:
            dims = dict(anchor)
            if axis == "qk_v":
                dims["qk_dim"] = dims["v_dim"] = w
            else:
                dims[axis] = w
            e = dims.pop("embed_dim")
            cfg = base.with_blocks([BlockDims(**dims)] * base.depth, embed_dim=e)
            out.append((axis, w, cfg))
    return out


def parse_span(text: str) -> tuple[str, list[int]]:
    """``AXIS=A-B,C``: the axis and its widths (A to B inclusive, and C)."""
    axis, _, rest = text.partition("=")
    widths: list[int] = []
    for part in rest.split(","):
        lo, _, hi = part.partition("-")
        widths += list(range(int(lo), int(hi or lo) + 1))
    return axis, widths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default="cpu_onnxruntime_fp32_bs64_t17")
    ap.add_argument("--base", default="revit_micro")
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--spans", action="append", default=[], metavar="AXIS=A-B,C,...",
                    help="the widths to time per axis (embed_dim, qk_v, mlp_dim; repeatable); default EMB 64-80, "
                         "QK/V 16-24, MLP 200-216")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)

    from revit.latency.accuracy import backend_for_table
    from revit.latency.speedups import HeldOut, time_speedups
    from revit.latency.table import LatencyTable
    from revit.presets import resolve_config

    t = LatencyTable.load(a.table)
    base = resolve_config(a.base)
    anchor = {"embed_dim": 72, "heads": 4, "qk_dim": 24, "v_dim": 24, "mlp_dim": 216}
    spans: dict[str, Any] = ({"embed_dim": range(64, 81), "qk_v": range(16, 25), "mlp_dim": range(200, 217)}
                             if not a.spans else dict(parse_span(s) for s in a.spans))
    vs = variants(base, anchor, spans)
    aligned = variants(base, anchor, {"embed_dim": [anchor["embed_dim"]]})[0][2]
    held = [HeldOut(ax, f"{ax}={w}", c) for ax, w, c in vs]
    rows, seconds = time_speedups(t, backend_for_table(t), aligned, held, passes=a.passes)
    print(f"anchor {anchor}; {len(rows)} models, {seconds:.0f} s of timing")
    print("axis        width  w%8  measured/anchor  table/anchor  excess")
    out = []
    for (ax, w, _), r in zip(vs, rows, strict=True):
        meas, pred = 1 / r.measured, 1 / r.predicted  # latency relative to the anchor
        print(f"{ax:10s} {w:6d} {w % 8:4d} {meas:15.3f} {pred:13.3f} {meas / pred - 1:+7.1%}")
        out.append({"axis": ax, "width": w, "measured_rel": meas, "table_rel": pred, "excess": meas / pred - 1})
    if a.out:
        a.out.write_text(json.dumps({"table": a.table, "anchor": anchor, "passes": a.passes, "seconds": seconds,
                                     "rows": out}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
