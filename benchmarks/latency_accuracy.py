"""How well does a sparse latency table predict whole models?  (issue 3, "Must show")

Measures 50 random held-out micro configs (whole models, onnxruntime CPU, the table's settings)
and prints predicted vs measured: MAPE and worst error, next to the number of cells the table
measured, its ratio to NViT's 9,375 cells and to the full grid, and its build time.  The noise floor
is measured in the same run: one config timed as ``--noise-k`` independent copies interleaved with
the others; a perfect predictor would still show that error.

    python benchmarks/latency_accuracy.py                       # the shipped micro table
    python benchmarks/latency_accuracy.py --build /tmp/t.json   # build a fresh table first, then validate
"""

from __future__ import annotations

import argparse
import sys
import time

from revit.paths import shipped_dir

SHIPPED = shipped_dir("latency_tables") / "cpu_onnxruntime_fp32_bs64_t17.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default=str(SHIPPED))
    ap.add_argument("--build", default=None, help="build a fresh micro table at this path first")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--noise-k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--model-source", default="graph", choices=("graph", "exported", "revit-models"))
    ap.add_argument("--export-check", type=int, default=5,
                    help="also validate N configs exported by revit.models (torch.onnx, ~8 s each); 0 to skip")
    ap.add_argument("--progress", action="store_true")
    a = ap.parse_args(argv)

    from revit.latency.accuracy import backend_for_table, validate
    from revit.latency.backends import BACKENDS
    from revit.latency.grid import micro
    from revit.latency.profiler import BuildSettings, build_table
    from revit.latency.table import LatencyTable

    path = a.table
    if a.build:
        t0 = time.perf_counter()
        ort = BACKENDS.get("onnxruntime")
        build_table(micro(), ort(device="cpu", threads=1, clock=ort.default_clock("cpu", 1)), a.build, BuildSettings(),
                    progress=a.progress)
        print(f"built {a.build} in {time.perf_counter() - t0:.0f} s wall")
        path = a.build
    table = LatencyTable.load(path)
    m, d = table.metadata, table.metadata["design"]
    meas = m["measurement"]
    backend = backend_for_table(table)  # the table's own backend, threads, clock and graph
    r = validate(table, backend, a.samples, seed=a.seed, noise_k=a.noise_k, model_source=a.model_source,
                 progress=a.progress)
    print(f"table         {path}")
    print(f"              {table.summary()}")
    print(f"settings      clock={meas['clock']} threads={m['backend_settings']['intra_op_threads']} "
          f"warmup={meas['warmup']} repeats={meas['repeats']} passes={meas['passes']} model source={a.model_source}")
    print(f"cells         {d['cells_measured']} measured (pilot {d.get('pilot_cells', 0)}, grid {table.n_cells}); "
          f"{d['ratio_to_nvit']:.1%} of NViT's 9,375; {d['ratio_to_full_grid']:.2%} of the full "
          f"{d['full_grid_cells']}-cell grid")
    print(f"knots         {d.get('knots')}")
    print(f"build time    {d['build_time_s']:.0f} s of measurement")
    print(f"validation    {len(r.configs)} random held-out micro configs, batch {table.batch_size}, "
          f"{r.seconds:.0f} s")
    print(f"MAPE          {r.mape:.2%}   worst {r.worst:.2%}   bias {r.bias:+.2%}")
    floor = r.noise_floor
    if floor is not None:
        print(f"noise floor   {floor:.2%} (one config measured {len(r.noise_measurements)} times in the same run)"
              f"   MAPE / noise floor = {r.mape / max(floor, 1e-12):.1f}x")
    if r.normalised:
        print(f"raw           without load normalisation: MAPE {r.raw_mape:.2%}, noise floor "
              f"{(r.raw_noise_floor or 0):.2%}")
    if a.export_check > 0:
        try:
            import revit.models  # noqa: F401
        except ImportError:
            print("export check  skipped: revit.models is not available")
        else:
            x = validate(table, backend, a.export_check, seed=a.seed + 100, noise_k=0, model_source="exported",
                         progress=a.progress)
            print(f"export check  {a.export_check} configs exported by revit.models (torch.onnx dynamo): "
                  f"MAPE {x.mape:.2%}, worst {x.worst:.2%}, bias {x.bias:+.2%}")
    ok = r.mape <= 0.05
    print("verdict       " + ("MAPE <= 5%" if ok else "MAPE > 5%: compare with the noise floor above"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
