"""Issue 30 item 3: rules and studies over depth.

A family says what it does with depth (and may set it), a rule may cap it, ``revit generate --depth N`` and
``--depth LOW:HIGH`` meet a MACs or latency budget within 1% (MACs recounted from the YAML, and once measured by
FlopCounterMode on the built model), and a searched family may search depth, the uniform family then too, with
Optuna's own integer distributions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from revit import counting
from revit.cli.main import main
from revit.config import ViTConfig
from revit.errors import BudgetError, ConfigError
from revit.rules import FAMILIES, Rule, Setting, generate, load_rule, macs_budget
from revit.rules.families import Uniform
from revit.rules.generate import depth_order
from revit.search.spec import StudySpec
from revit.search.testing import tiny_study_doc

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "latency_tables" / "cpu_onnxruntime_fp32_bs64_t17.json"
SHIPPED = ("paper", "paper-table6", "less-more-less", "uniform")


def run_cli(capsys, *argv):
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def meets(rule, budget, setting, depth):
    """Whether ``rule`` has a config within 1% of ``budget`` at exactly ``depth`` blocks (an independent call)."""
    try:
        generate(rule, macs_budget(budget), setting, depth=depth)
        return True
    except BudgetError:
        return False


def _rules_list_json() -> str:
    p = subprocess.run([sys.executable, "-m", "revit", "rules", "list", "--json"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return p.stdout


# families and rules --------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", SHIPPED)
def test_each_shipped_family_says_what_it_does_with_depth(family):
    cls = FAMILIES.get(family)
    assert "depth" in cls.depth_doc and cls.depth_doc in cls.description  # `revit rules list` shows it
    assert cls.depth_doc in (ROOT / "docs" / "guides" / "rules.md").read_text()  # and the docs, word for word
    listed = next(f for f in json.loads(_rules_list_json())["families"] if f["family"] == family)
    assert listed["depth"] == cls.depth_doc
    fam = cls()
    params = fam.check_params({})
    assert fam.depth(params, 7) == 7 and fam.max_depth(params) is None  # the shipped ones keep the asked depth


class SixBlocks(Uniform):
    """A family that sets its own depth: always 6 blocks."""

    name = "six-blocks"
    depth_doc = "always 6 blocks"
    description = "uniform, 6 blocks; depth: " + depth_doc
    named_rules = {}

    def depth(self, params, asked):
        return 6


@pytest.fixture
def six_blocks(monkeypatch):
    monkeypatch.setitem(FAMILIES._items, SixBlocks.name, SixBlocks)
    return Rule(name="six", family=SixBlocks.name, params={"head_dim": 0, "mlp_ratio": 4.0})


def test_a_family_may_set_its_depth(six_blocks):
    assert generate(six_blocks, "4M", "micro").config.depth == 6  # the micro setting asks for 8
    assert generate(six_blocks, "4M", "micro", depth=6).config.depth == 6
    with pytest.raises(ConfigError, match="sets its own depth"):
        generate(six_blocks, "4M", "micro", depth=8)
    g = generate(six_blocks, "4M", "micro", depth=(2, 10))  # a range holds only the depth it builds
    assert g.config.depth == 6 and abs(counting.macs(g.config) / 4e6 - 1) <= 0.01


def test_a_rule_file_may_cap_depth(tmp_path, capsys):
    rule = Rule(name="capped", family="uniform", params={"head_dim": 0, "mlp_ratio": 4.0}, max_depth=6)
    path = tmp_path / "capped.yaml"
    rule.save(path)
    assert yaml.safe_load(path.read_text())["max_depth"] == 6 and Rule.load(path) == rule
    assert "max_depth" not in load_rule("paper").to_dict()  # rules without a cap are written as before
    rc, out, _ = run_cli(capsys, "generate", "--rule", str(path), "--setting", "micro", "--macs", "4M",
                         "--depth", "6", "--json")
    assert rc == 0 and json.loads(out)["depth"] == 6
    for depth in ("7", "4:8"):
        rc, out, err = run_cli(capsys, "generate", "--rule", str(path), "--setting", "micro", "--macs", "4M",
                               "--depth", depth)
        assert rc == 2 and out == "" and err.count("\n") == 1
        assert "limit of 6 blocks of rule 'capped' (its max_depth)" in err


def test_depth_order_prefers_the_reference_depth_else_the_deepest():
    assert depth_order(load_rule("paper"), 8, 16) == [12, 13, 11, 14, 10, 15, 9, 16, 8]
    assert depth_order(load_rule("less-more-less"), 4, 7) == [7, 6, 5, 4]


# generate --depth ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,budget", [
    (["--uniform", "--setting", "micro", "--macs", "4M", "--depth", "5"], 4e6),
    (["--uniform", "--setting", "micro", "--macs", "4M", "--depth", "3:10"], 4e6),
    (["--uniform", "--setting", "micro", "--macs", "300K", "--depth", "1:12"], 3e5),
    (["--rule", "less-more-less", "--setting", "micro", "--macs", "6M", "--depth", "4:16"], 6e6),
    (["--rule", "paper", "--macs", "2G", "--depth", "6:16"], 2e9),
    (["--rule", "paper", "--macs", "2G", "--depth", "6:10"], 2e9),
    (["--rule", "less-more-less", "--macs", "1.3G", "--depth", "8:14"], 1.3e9),
])
def test_generate_depth_meets_a_macs_budget_within_one_percent(capsys, argv, budget):
    rc, out, err = run_cli(capsys, "generate", *argv, "--json")
    assert rc == 0, err
    rep = json.loads(out)
    cfg = ViTConfig.from_dict(rep["config"])
    macs = counting.macs(cfg)  # recounted from the config the user gets
    assert macs == rep["macs"] and abs(macs / budget - 1) <= 0.01
    spec = argv[argv.index("--depth") + 1]
    rule = load_rule("uniform" if "--uniform" in argv else argv[argv.index("--rule") + 1])
    setting = Setting.PRESETS["micro" if "micro" in argv else "imagenet"]
    if ":" not in spec:
        assert cfg.depth == int(spec) and rep["depth_range"] is None
        return
    low, high = map(int, spec.split(":"))
    assert rep["depth_range"] == [low, high] and low <= cfg.depth <= high
    # the chosen depth is the first of the family's order that meets the budget, each checked on its own
    order = depth_order(rule, low, high)
    before = order[:order.index(cfg.depth)]
    assert not any(meets(rule, budget, setting, d) for d in before)
    if rule.family == "paper":
        assert cfg.depth == min(12, high)  # the reference depth when it is in the range and meets the budget
    else:
        assert all(d <= cfg.depth for d in range(low, high + 1) if meets(rule, budget, setting, d))  # deepest
    assert f"depth {cfg.depth} (searched {low}..{high})" in err


def test_generate_depth_counts_equal_flop_counter_mode():
    """One generated depth-searched config built as a model: MACs by FlopCounterMode equal the count and the budget
    within 1%, params equal numel."""
    from test_counting import measured

    from revit.models import build_model

    g = generate(load_rule("less-more-less"), macs_budget("3M"), Setting.PRESETS["micro"], depth=(3, 6))
    assert g.config.depth == 6
    macs, _, params = measured(build_model(g.config), g.config)
    assert macs == counting.macs(g.config) and params == counting.params(g.config)
    assert abs(macs / 3e6 - 1) <= 0.01


@pytest.mark.parametrize("which", [["--uniform"], ["--rule", "less-more-less"]])
def test_generate_depth_meets_a_latency_budget(capsys, which):
    from revit.latency.table import LatencyTable
    from revit.rules import latency_budget

    table = LatencyTable.load(TABLE)
    rc, out, err = run_cli(capsys, "generate", "--setting", "micro", *which, "--latency-ms", "10", "--table",
                           str(TABLE), "--depth", "4:24", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    cfg = ViTConfig.from_dict(rep["config"])
    assert abs(table.predict(cfg).total_s / 0.010 - 1) <= 0.01
    # the table's narrowest EMB and the blocks' fixed costs stop the depth short of the range's end
    assert 4 <= cfg.depth < 24
    for deeper in range(cfg.depth + 1, 25):  # nothing deeper in the range meets it (the family's preference)
        with pytest.raises(BudgetError):
            generate(load_rule(which[-1].lstrip("-")), latency_budget(0.010, table), "micro", depth=deeper)


def test_a_depth_search_does_not_import_torch():
    code = ("import sys; from revit.cli.main import main; "
            "rc = main(['generate', '--rule', 'less-more-less', '--macs', '1.3G', '--depth', '6:14', '--json']); "
            "assert rc == 0; bad = [m for m in ('torch', 'timm') if m in sys.modules]; "
            "print('LOADED', bad); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0 and "LOADED []" in p.stdout, p.stdout[-300:] + p.stderr[-300:]


def test_a_depth_range_that_meets_no_budget_names_both_ends(capsys):
    rc, out, err = run_cli(capsys, "generate", "--uniform", "--setting", "micro", "--macs", "10K", "--depth", "2:5")
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "no depth in 2..5 meets" in err and "depth 5" in err and "depth 2" in err


# studies ------------------------------------------------------------------------------------------------------
LML = {"family": "less-more-less", "base": "less-more-less", "params": {"plateau": [0.2, 1.0], "mlp_end": [0.25, 1.0]}}
UNI = {"family": "uniform", "params": {"head_dim": [8, 32], "mlp_ratio": [1.5, 6.0]}}


def test_the_uniform_family_searches_depth_when_a_rule_family_does():
    spec = StudySpec.from_dict(tiny_study_doc(space=[{**LML, "depth": [1, 4]}, UNI]), "d.yaml")
    lml, uni = spec.spaces
    assert lml.depth == (1, 4) and uni.depth == (1, 4) and uni.depth_from == "less-more-less"
    own = StudySpec.from_dict(tiny_study_doc(space=[{**LML, "depth": {"low": 1, "high": 4}},
                                                    {**UNI, "depth": [2, 3]}]), "d.yaml")
    assert own.spaces[1].depth == (2, 3) and own.spaces[1].depth_from is None  # its own range is kept
    plain = StudySpec.from_dict(tiny_study_doc(space=[LML, UNI]), "d.yaml")
    assert [s.depth for s in plain.spaces] == [None, None]  # depth is searched only when asked


def test_both_families_search_depth_with_optunas_int_distribution(tmp_path):
    from revit.search.runner import run_study
    from revit.search.testing import quick_objective

    doc = tiny_study_doc(space=[{**LML, "depth": [1, 4]}, UNI], n_trials=3, seeds=[0], baselines=[],
                         sampler={"name": "random", "seed": 0}, pruner={"name": "none"})
    spec = StudySpec.from_dict(doc, "d.yaml")
    ss = run_study(spec, f"journal:{tmp_path}/j.log", objective=quick_objective(spec))
    depths = set()
    for fam, study in ss.families.items():
        trials = study.get_trials()
        assert len(trials) == 3, fam
        for t in trials:
            assert t.distributions["depth"] == IntDistribution(1, 4), fam
            if t.state != TrialState.COMPLETE:  # a point the budget cannot reach is pruned, saying why
                assert "infeasible" in t.user_attrs
                continue
            assert t.user_attrs["depth"] == t.params["depth"] == len(t.user_attrs["blocks"])
            assert abs(t.user_attrs["macs"] / 200e3 - 1) <= 0.01  # the budget met at the sampled depth
            depths.add(t.params["depth"])
    assert len(depths) > 1  # depth really varies, in trials that trained
    from revit.search.report import write_report

    summary = write_report(spec, ss, tmp_path / "rep")  # the report says each config's depth
    assert {g["depth"] for g in summary["groups"]} == depths
    assert all(g["depth"] == len(g["blocks"]) for g in summary["groups"])


def test_a_study_without_depth_keeps_its_fingerprint():
    """Adding depth to the space changes nothing for a spec that does not search it (a running study's workers
    still join); one that does gets another fingerprint."""
    from revit.search.studies import _space_doc, fingerprint

    plain = StudySpec.from_dict(tiny_study_doc(space=[LML, UNI]), "d.yaml")
    deep = StudySpec.from_dict(tiny_study_doc(space=[{**LML, "depth": [1, 4]}, UNI]), "d.yaml")
    before = {"name", "family", "params", "base_rule", "granularity", "mlp_factor"}  # the fields hashed before
    assert all(set(_space_doc(s)) == before for s in plain.spaces)
    assert fingerprint(deep) != fingerprint(plain)
