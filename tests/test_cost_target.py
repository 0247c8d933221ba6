"""One cost target (``revit.cost.CostTarget``) from the CLI to the stop, and the prune workflow (issue 28, items 1
and 4): traces byte-identical to those of the commit before the change, the shapes earlier versions wrote still
load, a user's third cost model works through prune, generate and a study without an edit to revit, the run
folder is claimed once and the target's cost model built once, and ``PruneConfig`` is torch-free."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from revit import counting
from revit.config import ViTConfig
from revit.cost import COSTS, CostModel, CostTarget, MacsCost
from revit.errors import ConfigError, RevitError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "cost_target"
# the shipped micro table as it was when the fixtures were written (v1, built on an AMD EPYC, calibrated): the
# shipped table has since been rebuilt (v2, more embed_dim knots, another CPU), which changes what a prune picks
TABLE = FIXTURES / "cpu_onnxruntime_fp32_bs64_t17_v1_amd.json"
# the runs whose traces tests/fixtures/cost_target/*.jsonl hold, written by `revit prune` at commit 5f6e186
RUN = ["prune", "--model", "revit_micro", "--data", "digits", "--train-limit", "256", "--val-size", "64",
       "--test-limit", "0", "--interval", "2", "--step-fraction", "0.1", "--batch-size", "32", "--eval-size", "64",
       "--threads", "1", "--seed", "0", "--no-progress"]
TARGETS = {"macs": ["--target-macs", "0.5"], "latency": ["--target-latency", "0.5", "--table", str(TABLE)]}


def assert_same_trace(fresh: list[bytes], old: list[bytes]) -> None:
    """Two traces' lines alike: byte for byte on a CPU that reproduces the fixtures (the Xeon did); elsewhere every
    decision (widths, removed units, their order, every key and string) identical and every number within another
    CPU's float rounding (an AMD EPYC's kernels moved saliencies by up to 3e-5 relative, scores near zero by 6e-13)."""
    if fresh == old:
        return
    assert len(fresh) == len(old)

    def alike(a: Any, b: Any, where: str) -> None:
        if isinstance(a, float) or isinstance(b, float):
            assert isinstance(a, (int, float)) and isinstance(b, (int, float)), where
            assert math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-11), (where, a, b)
        elif isinstance(a, dict):
            assert isinstance(b, dict) and list(a) == list(b), where
            for k in a:
                alike(a[k], b[k], f"{where}.{k}")
        elif isinstance(a, list):
            assert isinstance(b, list) and len(a) == len(b), where
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                alike(x, y, f"{where}[{i}]")
        else:
            assert a == b, (where, a, b)

    for i, (a, b) in enumerate(zip(fresh, old, strict=True)):
        alike(json.loads(a), json.loads(b), f"line {i}")


@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_prune_trace_is_byte_identical_to_the_one_written_before_the_change(tmp_path: Path, cli: Any,
                                                                            kind: str) -> None:
    code, _, err = cli(*RUN, *TARGETS[kind], "--out", tmp_path / "run")
    assert code == 0, err
    fresh = (tmp_path / "run" / "trace.jsonl").read_bytes()
    assert_same_trace(fresh.splitlines(), (FIXTURES / f"prune_{kind}_trace.jsonl").read_bytes().splitlines())
    # metrics.json holds the target in the trace header's shape (one shape, with what it came to)
    header = json.loads(fresh.splitlines()[0])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["target"] == header["target"] == {"kind": kind, "ratio": 0.5, "value": header["target"]["value"],
                                                     "base": metrics["base"]["cost"]}
    assert header["target"]["value"] == pytest.approx(0.5 * metrics["base"]["cost"])


def test_the_shapes_earlier_versions_wrote_still_load() -> None:
    from revit.search.spec import StudySpec
    from revit.search.studies import fingerprint
    from revit.search.testing import tiny_study_doc
    from revit.trace import Trace

    old = json.loads((FIXTURES / "prune_latency_trace.jsonl").read_text().splitlines()[0])
    want = CostTarget.latency(0.5)
    assert CostTarget.from_dict(old["target"]) == want  # trace header {kind, ratio, value, base}
    assert CostTarget.from_dict(old["settings"]) == want  # settings {target, target_kind, ...}
    assert CostTarget.from_dict({"kind": "latency", "ratio": 0.5}) == want  # metrics.json
    assert Trace.load(FIXTURES / "prune_latency_trace.jsonl").steps[-1].step == 5
    # `revit generate --json`'s budget and a study spec's budget as the earlier types wrote them
    gen = CostTarget.from_dict({"kind": "macs", "value": 4.6e9, "unit": "MACs", "batch_size": None})
    assert gen == CostTarget.absolute("macs", 4.6e9) and gen.describe() == "4.60G MACs"
    spec = {"kind": "latency", "value": None, "low": 1e-3, "high": 3e-3, "log": False, "table": "t.json"}
    assert CostTarget.from_dict(spec).fingerprint() == spec and CostTarget.from_dict(spec).searched
    for t in (want, gen, CostTarget.from_dict(spec)):
        assert CostTarget.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    # a study's fingerprint (what its storage was created with) is what the commit before the change computed
    for budget, fp in (({"macs": {"low": "150K", "high": "250K"}, "log": False}, "59fa6774df1f7bc2"),
                       ({"macs": 200000}, "6bc1cf54b36feb32")):
        assert fingerprint(StudySpec.from_dict(tiny_study_doc(budget=budget))) == fp


def test_a_target_is_one_of_three_forms_and_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="one of a ratio, a value"):
        CostTarget("macs", ratio=0.5, value=1e6)
    with pytest.raises(ConfigError, match="low must be below high"):
        CostTarget("macs", low=2e6, high=1e6)
    with pytest.raises(ConfigError, match="needs budget.table"):
        CostTarget.from_spec({"latency_ms": 2.5})
    with pytest.raises(ConfigError, match="milliseconds"):
        CostTarget.from_spec({"latency_ms": "2.5ms", "table": "t.json"})
    t = CostTarget.from_spec({"latency_ms": {"low": 1, "high": 4}, "table": "t.json"})
    assert (t.low, t.high) == pytest.approx((1e-3, 4e-3)) and t.baseline_values()[1] == pytest.approx(2e-3)
    assert CostTarget.from_spec({"macs": "4.6G"}).value == 4.6e9


class KiloParams(CostModel):
    """A user's cost model: parameters, written in thousands (``kparams: 500``)."""

    name, unit, spec_key, per_unit = "kparams", "params", "kparams", "parameter"
    spec_scale: ClassVar[float] = 1e3

    def cost(self, cfg: ViTConfig) -> float:
        return float(counting.params(cfg))

    def format(self, value: float) -> str:
        return f"{counting.format_count(value)} params"


@pytest.fixture
def third_cost(monkeypatch: pytest.MonkeyPatch) -> type[CostModel]:
    monkeypatch.setitem(COSTS._items, KiloParams.name, KiloParams)
    return KiloParams


def test_a_third_cost_model_works_through_prune_generate_and_a_study(tmp_path: Path, cli: Any,
                                                                    third_cost: type[CostModel]) -> None:
    from revit.rules import GenerationBounds, generate, load_rule
    from revit.search.arms import describe, generate_arm, trial_arm
    from revit.search.spec import StudySpec
    from revit.search.testing import tiny_study_doc

    code, _, err = cli(*RUN, "--target-kparams", "0.6", "--out", tmp_path / "run")
    assert code == 0, err
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["target"]["kind"] == "kparams" and m["penalty"] == "kparams"
    assert m["pruned"]["params"] <= 0.6 * m["base"]["params"] < m["base"]["params"]
    assert "kparams" in err and "saliency per parameter saved" in err
    # generation for an absolute target of it
    from revit.config import Setting

    g = generate(load_rule("less-more-less"), CostTarget.absolute("kparams", 400e3, KiloParams()),
                 Setting.PRESETS["micro"], bounds=GenerationBounds(tolerance=0.02))
    assert abs(counting.params(g.config) / 400e3 - 1) <= 0.02
    # a study spec: its key, its value in the unit written, an objective named after it
    spec = StudySpec.from_dict(tiny_study_doc(budget={"kparams": 50}, objectives=["accuracy", "kparams"],
                                              pruner={"name": "none"}, sampler={"name": "random", "seed": 0}))
    assert spec.budget == CostTarget.absolute("kparams", 50e3) and spec.directions == ["maximize", "minimize"]

    class Trial:
        number, user_attrs, params = 0, {}, {}

        def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
            return (low + high) / 2

        def set_user_attr(self, key: str, value: Any) -> None:
            self.user_attrs[key] = value

    arm = trial_arm(spec, Trial(), None)
    attrs = describe(spec, Trial(), arm)
    assert attrs["kparams"] == pytest.approx(counting.params(arm.config) / 1e3)
    assert abs(counting.params(arm.config) / 50e3 - 1) <= 0.01
    assert generate_arm(spec, load_rule("paper"), 50e3, None, name="x").config.depth == 2


def test_the_run_is_claimed_once_and_the_target_validated_and_its_cost_built_once(tmp_path: Path, cli: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import revit.run_folders

    claims: list[str] = []  # the callers of claim_run (a claim re-reads its folder itself as it begins)
    real = revit.run_folders.claim_run

    def counted(folder: Any, *a: Any, **k: Any) -> Any:
        caller = Path(sys._getframe(1).f_code.co_filename)
        if caller.name != "run_folders.py":
            claims.append(f"{caller.parent.name}/{caller.name}")
        return real(folder, *a, **k)

    monkeypatch.setattr(revit.run_folders, "claim_run", counted)
    built: list[str] = []
    init = MacsCost.__init__
    monkeypatch.setattr(MacsCost, "__init__", lambda self, *a, **k: built.append("macs") or init(self, *a, **k))
    checked: list[float | None] = []
    check = CostTarget.__post_init__
    monkeypatch.setattr(CostTarget, "__post_init__", lambda self: checked.append(self.ratio) or check(self))
    code, _, err = cli(*RUN, "--target-macs", "0.6", "--out", tmp_path / "run")
    assert code == 0, err
    assert claims == ["workflows/prune.py"] and built == ["macs"] and checked == [0.6]


def test_train_prune_and_the_study_share_one_data_check(tmp_path: Path, cli: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from revit.data import Splits

    seen: list[str] = []

    def refuse(self: Any, cfg: Any, source: str) -> None:
        seen.append(source)
        raise ConfigError(f"refused: {source}")

    monkeypatch.setattr(Splits, "check_fits", refuse)
    code, _, err = cli(*RUN, "--target-macs", "0.6", "--out", tmp_path / "p")
    assert code == 2 and "refused: digits" in err and not (tmp_path / "p" / "trace.jsonl").exists()
    code, _, err = cli("train", "revit_micro", "--data", "digits", "--epochs", "1", "--out", tmp_path / "t")
    assert code == 2 and "refused: digits" in err
    from revit.search.objective import check_splits
    from revit.search.spec import StudySpec
    from revit.search.testing import tiny_study_doc

    spec = StudySpec.from_dict(tiny_study_doc())
    with pytest.raises(ConfigError, match="refused"):
        check_splits(Splits([], [], [], num_classes=10, in_chans=1, img_size=8), spec.setting, "digits")
    assert len(seen) == 3


def test_prune_config_and_the_target_are_torch_free() -> None:
    code = ("import sys; from revit.recipes import PruneConfig, Schedule; from revit.cost import CostTarget; "
            "pc = PruneConfig(target=CostTarget.latency(0.6), interval=3, per_step=2); pc.schedule(10); "
            "assert pc.settings()['target_kind'] == 'latency'; assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    with pytest.raises(ConfigError, match="relative CostTarget"):
        from revit.recipes import PruneConfig

        PruneConfig(target=CostTarget.absolute("macs", 1e6))


def test_no_string_switch_on_a_cost_models_name_outside_its_module() -> None:
    hits = [f"{p.relative_to(ROOT)}:{i}" for d in ("search", "prune", "cli") for p in (ROOT / "revit" / d).rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r'"macs"|"latency"', line)]
    assert hits == []
    r = subprocess.run([sys.executable, "-c", "import sys, revit.prune.global_pruner; "
                        "assert 'revit.train_loop' not in sys.modules, 'revit.train_loop imported'"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_the_no_op_pruner_has_one_home() -> None:
    from revit.search.samplers import stops_nothing
    from revit.search.spec import StudySpec
    from revit.search.testing import tiny_study_doc

    assert stops_nothing("none") and stops_nothing("nop") and not stops_nothing("median") and not stops_nothing("x")
    two = dict(objectives=["accuracy", "macs"], sampler={"name": "random", "seed": 0})
    for name in ("none", "nop"):
        assert StudySpec.from_dict(tiny_study_doc(pruner={"name": name}, **two)).optuna_pruner.name == name
    with pytest.raises(RevitError, match="single objective"):
        StudySpec.from_dict(tiny_study_doc(pruner={"name": "median"}, **two))
    src = [(ROOT / "revit" / "search" / f).read_text() for f in ("spec.py", "objective.py")]
    assert not any('"nop"' in s for s in src)
