"""Run timm's own ``tests/test_models.py`` (sdist of the installed timm) over revit's registered models.

    python tests/timm_suite/run.py                       # every revit_* model but the DeiT-B-sized ones
    python tests/timm_suite/run.py --models revit_micro  # one model (the fast subset in the default suite)

The sdist comes from the package index (``pip download timm==<installed> --no-binary :all:
--no-deps``) into ``build/timm-suite/`` once.  The only changes made to timm's test files: its
``conftest.py`` imports ``revit.models`` (registering the models), and ``test_models.py`` routes
``revit_*`` as timm routes ``deit*`` (``'revit_*'`` added to ``NON_STD_FILTERS``, revit's model
module added to ``FEAT_INTER_FILTERS``).  TorchScript tests are deselected (not a goal), and so
are the two that download timm's hub weights (``test_model_load_pretrained``/``_features_pretrained``:
they only select models with hub weights, never a revit one).  timm's
``deit_tiny_patch16_224`` runs in the same session as the reference; the per-model table of
collected/passed/skipped/failed tests is printed and, with ``--json``, written out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = "deit_tiny_patch16_224"
EXCLUDED = ("revit_deit_base*",)  # DeiT-B-sized: too slow for the suite
MODEL_MODULE = "revit.models.vit"
NEEDS_HUB = ("test_model_load_pretrained", "test_model_features_pretrained")  # download timm's weights
PATCHES = {  # anchor in timm's test_models.py -> the same line with revit added
    "NON_STD_FILTERS = [\n    'vit_*',": "NON_STD_FILTERS = [\n    'revit_*', 'vit_*',",
    "FEAT_INTER_FILTERS = [\n    'vision_transformer',":
        f"FEAT_INTER_FILTERS = [\n    '{MODEL_MODULE.rsplit('.', 1)[-1]}', 'vision_transformer',",
}
CONFTEST_LINE = "import revit.models  # noqa: F401,E402 - revit: register the revit_* models in timm\n"


def fetch(dest: Path) -> Path:
    """Download and unpack timm's sdist tests for the installed version; returns the patched tests folder."""
    ver = version("timm")
    root = dest / f"timm-{ver}"
    tests = root / "tests"
    if (tests / ".revit-patched").is_file():
        return tests
    dest.mkdir(parents=True, exist_ok=True)
    sdist = dest / f"timm-{ver}.tar.gz"
    if not sdist.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", f"timm=={ver}", "--no-binary", ":all:",
                        "--no-deps", "-q", "-d", str(dest)], check=True)
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith(f"timm-{ver}/tests/") or m.name == f"timm-{ver}/pyproject.toml"]
        tar.extractall(dest, members=members, filter="data")
    text = (tests / "test_models.py").read_text()
    for old, new in PATCHES.items():
        if text.count(old) != 1:
            raise SystemExit(f"timm {ver} test_models.py: anchor {old!r} not found once; update PATCHES")
        text = text.replace(old, new)
    (tests / "test_models.py").write_text(text)
    with open(tests / "conftest.py", "a") as f:
        f.write("\n" + CONFTEST_LINE)
    (tests / ".revit-patched").write_text(json.dumps({"timm": ver, "patches": list(PATCHES.values())}))
    return tests


def _model_of(case: str, names: list[str]) -> str | None:
    """The model a test case ran on, from its id (``test_x[revit_micro-1]``, tags dropped)."""
    params = case.partition("[")[2].rstrip("]").split("-")
    for p in params:
        base = p.split(".")[0]
        if base in names:
            return base
    return None


def summarize(junit: Path, names: list[str]) -> dict[str, dict[str, int]]:
    """Per model: collected, passed, skipped and failed test cases (and the test functions collected)."""
    out: dict[str, Counter[str]] = {n: Counter() for n in names}
    funcs: dict[str, set[str]] = {n: set() for n in names}
    for tc in ET.parse(junit).getroot().iter("testcase"):
        name = tc.get("name", "")
        model = _model_of(name, names)
        if model is None:
            continue
        out[model]["collected"] += 1
        funcs[model].add(name.partition("[")[0])
        kids = {c.tag for c in tc}
        key = "failed" if kids & {"failure", "error"} else "skipped" if "skipped" in kids else "passed"
        out[model][key] += 1
    return {n: {"collected": c["collected"], "passed": c["passed"], "skipped": c["skipped"],
                "failed": c["failed"], "test_functions": len(funcs[n])} for n, c in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", help="revit models to test (default: every revit_* but DeiT-B-sized)")
    ap.add_argument("--no-reference", action="store_true", help=f"do not run timm's {REFERENCE} alongside")
    ap.add_argument("--dest", type=Path, default=ROOT / "build" / "timm-suite", help="sdist cache folder")
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads")
    ap.add_argument("--json", type=Path, help="write the per-model counts here")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args(argv)

    import fnmatch

    import timm

    import revit.models  # noqa: F401 - registers the names listed below

    models = args.models or [m for m in timm.list_models("revit_*")
                             if not any(fnmatch.fnmatch(m, x) for x in EXCLUDED)]
    names = list(models) + ([] if args.no_reference else [REFERENCE])
    tests = fetch(args.dest)
    junit = args.dest / "junit.xml"
    others = [m for m in timm.list_models("revit_*") if m not in names]  # -k matches substrings
    select = " or ".join(names) + (f") and not ({' or '.join(others)}" if others else "")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("GITHUB_ACTIONS", None)  # the same selection everywhere
    deselect = " and not ".join(("torchscript", *NEEDS_HUB))
    cmd = [sys.executable, "-m", "pytest", str(tests / "test_models.py"), "-q", "-p", "no:cacheprovider",
           "--rootdir", str(tests.parent), "-m", "not torchscript", "-k", f"({select}) and not {deselect}",
           f"--junitxml={junit}", *args.pytest_args]
    print("$", " ".join(cmd), flush=True)
    rc = subprocess.run(cmd, cwd=tests.parent, env=env).returncode
    table = summarize(junit, names)
    print(f"\n{'model':<38} {'functions':>9} {'collected':>9} {'passed':>6} {'skipped':>7} {'failed':>6}")
    for n, c in table.items():
        print(f"{n:<38} {c['test_functions']:>9} {c['collected']:>9} {c['passed']:>6} {c['skipped']:>7} "
              f"{c['failed']:>6}")
    if args.json:
        args.json.write_text(json.dumps({"timm": version("timm"), "models": table}, indent=2))
    return rc


if __name__ == "__main__":
    sys.exit(main())
