"""Which widths of a held-out config the table misprices: the config with one axis moved onto aligned widths at a time.

Each variant (EMB to the neighbouring multiples of 8/16, QK and/or V to 24, MLP up to a multiple of 16 or 32, and
everything aligned at once) is exported and timed with the held-out protocol (interleaved with the base, a fresh
session each pass); the error that a variant removes is what the table misprices on that axis.

Usage (idle machine):
    PYTHONPATH=. python benchmarks/aligned_variants.py --name tp-hessian@0.5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default="latency_tables/cpu_onnxruntime_fp32_bs64_t17.json")
    ap.add_argument("--rows", default="benchmarks/results/speedup_heldout.json")
    ap.add_argument("--name", default="tp-hessian@0.5")
    ap.add_argument("--passes", type=int, default=10)
    a = ap.parse_args()

    from revit.config import ViTConfig
    from revit.latency.accuracy import backend_for_table
    from revit.latency.speedups import HeldOut, time_speedups
    from revit.latency.table import LatencyTable
    from revit.presets import resolve_config

    t = LatencyTable.load(a.table)
    rows = {r["name"]: r for r in json.loads(Path(a.rows).read_text())["rows"]}
    c = ViTConfig.from_dict(rows[a.name]["config"])
    rep = dataclasses.replace

    def up(x: int, q: int) -> int:
        return -(-x // q) * q

    def blocks(**kw: object) -> tuple[object, ...]:
        return tuple(rep(b, **{k: (f(b) if callable(f) else f) for k, f in kw.items()}) for b in c.blocks)

    e = c.embed_dim
    variants = {"as is": c, f"EMB {up(e, 8)}": rep(c, embed_dim=up(e, 8)),
                f"EMB {e // 16 * 16}": rep(c, embed_dim=e // 16 * 16), f"EMB {up(e, 16)}": rep(c, embed_dim=up(e, 16)),
                "QK 24": rep(c, blocks=blocks(qk_dim=24)),
                "V 24": rep(c, blocks=blocks(v_dim=24)), "QK, V 24": rep(c, blocks=blocks(qk_dim=24, v_dim=24)),
                "MLP up to /16": rep(c, blocks=blocks(mlp_dim=lambda b: up(b.mlp_dim, 16))),
                "MLP up to /32": rep(c, blocks=blocks(mlp_dim=lambda b: up(b.mlp_dim, 32))),
                "all aligned": rep(c, embed_dim=up(e, 8), blocks=blocks(qk_dim=24, v_dim=24,
                                                                      mlp_dim=lambda b: up(b.mlp_dim, 32)))}
    held = [HeldOut("variant", k, v) for k, v in variants.items()]  # type: ignore[arg-type]
    got, seconds = time_speedups(t, backend_for_table(t), resolve_config("revit_micro"), held, passes=a.passes,
                                 progress=False)
    print(f"{a.name} and its aligned variants ({seconds:.0f} s of timing):")
    for r in got:
        print(f"  {r.name:16s} predicted {r.predicted:.3f}x measured {r.measured:.3f}x error {r.error:+.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
