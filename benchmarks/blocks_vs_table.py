"""Where a held-out config's error comes from: its blocks timed one by one against the table, and against the model.

For each named config of a held-out result (``benchmarks/speedup_heldout*.py --out``), every distinct block is timed
on the table's backend with the table's protocol (bracketed by the table's reference block, put back at the
reference's build median, as a build does) and compared with the table's uncalibrated price: a block the table
misprices points at its knots. The config's blocks are then summed and set beside the whole exported model measured
in the held-out run: a gap there, the same for every config, is what a calibration absorbs; one that differs between
configs is not. ``--graphs`` also times each config's blocks raw (no reference) on both onnxruntime block graphs,
``shared`` (weights as inputs) and ``per-cell`` (weights as constants, pre-packed as in a deployed model).

Usage (idle machine):
    PYTHONPATH=. python benchmarks/blocks_vs_table.py --table cpu_onnxruntime_fp32_bs1_t198 \\
        --rows benchmarks/results/speedup_heldout_deit.json --names deit-tiny-latency0.5,paper@0.7 --graphs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def cells_of(rows: dict[str, Any], names: list[str]) -> dict[tuple[int, ...], set[str]]:
    """Every distinct block (embed_dim, heads, qk_dim, v_dim, mlp_dim) of the named configs, with who has it."""
    cells: dict[tuple[int, ...], set[str]] = {}
    for n in names:
        c = rows[n]["config"]
        for b in c["blocks"]:
            key = (c["embed_dim"], b["heads"], b["qk_dim"], b["v_dim"], b["mlp_dim"])
            if b["heads"] or b["mlp_dim"]:
                cells.setdefault(key, set()).add(n)
    return cells


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", required=True)
    ap.add_argument("--rows", type=Path, required=True, help="a held-out result JSON (its rows and configs)")
    ap.add_argument("--names", required=True, help="comma-separated config names of those rows")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--graphs", action="store_true", help="also compare the shared and per-cell block graphs")
    a = ap.parse_args(argv)

    from revit.config import BlockDims
    from revit.latency.accuracy import backend_for_table
    from revit.latency.backends import get_backend
    from revit.latency.table import LatencyTable
    from revit.latency.timing import Reference

    t = LatencyTable.load(a.table, calibrated=False)
    rows = {r["name"]: r for r in json.loads(a.rows.read_text())["rows"]}
    names = a.names.split(",")
    cells = cells_of(rows, names)
    be = backend_for_table(t)
    ref = Reference.of_table(t, be, 2)
    ref_med = float(t.metadata["measurement"]["reference"]["median_s"]) if ref is not None else 1.0
    samples: dict[tuple[int, ...], list[float]] = {k: [] for k in cells}
    loads = {k: be.block(k[0], BlockDims(*k[1:]), t.tokens, t.batch_size) for k in cells}
    keys = list(cells)
    for p in range(a.passes):
        for i in np.random.default_rng(p).permutation(len(keys)):
            k = keys[i]
            loads[k].time(2)
            r0 = ref.time() if ref is not None else 1.0
            s = loads[k].time(5)
            r1 = ref.time() if ref is not None else 1.0
            samples[k] += [x / ((r0 + r1) / 2) for x in s]
    for w in loads.values():
        w.close()
    meas = {k: float(np.median(v)) * ref_med for k, v in samples.items()}
    pred = {k: t.block_latency(k[0], BlockDims(*k[1:])) for k in cells}
    print("block (embed, heads, qk, v, mlp)        table ms  measured ms  table/measured - 1")
    for k in sorted(cells, key=lambda k: pred[k] / meas[k]):
        print(f"{k!s:38s} {pred[k] * 1e3:9.3f} {meas[k] * 1e3:12.3f} {pred[k] / meas[k] - 1:+8.1%}  "
              f"{','.join(sorted(cells[k]))[:40]}")
    for n in names:
        c = rows[n]["config"]
        ks = [(c["embed_dim"], b["heads"], b["qk_dim"], b["v_dim"], b["mlp_dim"]) for b in c["blocks"]
              if b["heads"] or b["mlp_dim"]]
        p_, m_ = sum(pred[k] for k in ks), sum(meas[k] for k in ks)
        print(f"{n}: blocks table {p_ * 1e3:.2f} ms, measured {m_ * 1e3:.2f} ms ({p_ / m_ - 1:+.1%}); "
              f"whole exported model measured {rows[n]['measured_s'] * 1e3:.2f} ms")
    if a.graphs:
        for n in names:
            c = rows[n]["config"]
            tot = {}
            for graph in ("shared", "per-cell"):
                b2 = get_backend("onnxruntime", threads=1, clock="thread", graph=graph)
                total = 0.0
                for b in c["blocks"]:
                    if not (b["heads"] or b["mlp_dim"]):
                        continue
                    w = b2.block(c["embed_dim"], BlockDims(b["heads"], b["qk_dim"], b["v_dim"], b["mlp_dim"]),
                                 t.tokens, t.batch_size)
                    w.time(3)
                    total += float(np.median(w.time(15)))
                    w.close()
                b2.close()
                tot[graph] = total
            fixed = t.fixed.latency(c["embed_dim"]) if t.fixed is not None else 0.0
            whole = rows[n]["measured_s"] - fixed
            print(f"{n}: raw blocks shared {tot['shared'] * 1e3:.2f} ms, per-cell {tot['per-cell'] * 1e3:.2f} ms; "
                  f"whole less fixed parts / blocks: shared {whole / tot['shared']:.3f}, "
                  f"per-cell {whole / tot['per-cell']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
