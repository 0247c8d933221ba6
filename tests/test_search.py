"""Search studies: spec validation, storages (one contract suite), objective, runner, faults, report."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import FixedTrial, TrialState

from revit import counting
from revit.errors import FileFormatError, StorageError, UnknownNameError
from revit.paths import shipped_dir
from revit.search.spec import StudySpec, load_spec
from revit.search.storage import STORAGES, normalize_url, open_storage
from revit.search.testing import STORAGE_MODES, storage_url
from revit.search.testing import tiny_study_doc as tiny_doc

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parents[1]


def tiny_spec(**over) -> StudySpec:
    return StudySpec.from_dict(tiny_doc(**over), "tiny.yaml")


@pytest.fixture(params=STORAGE_MODES)
def url(request, tmp_path):
    pg = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return storage_url(request.param, tmp_path, pg)


# spec ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(shipped_dir("search").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_specs_load(path):
    spec = load_spec(str(path))
    assert spec.name == path.stem
    assert spec.directions[0] == "maximize"
    assert spec.baselines and spec.baselines[0].rule == "uniform"
    assert load_spec(path.stem) == spec  # also by shipped name


def test_spec_sections_are_typed_and_keyed_by_their_fields():
    from dataclasses import fields

    from revit.config import Setting
    from revit.data.spec import DataSpec
    from revit.recipes import TrainConfig

    spec = tiny_spec(train={"epochs": 2, "lr": 0.01}, data={"source": "digits", "val_size": 50},
                     setting={"preset": "micro", "num_classes": 10}, sampler={"name": "tpe", "seed": 3})
    assert spec.train == TrainConfig(epochs=2, lr=0.01)
    assert spec.train_config(7) == TrainConfig(epochs=2, lr=0.01, seed=7)
    assert spec.data == DataSpec(source="digits", val_size=50) and spec.setting == Setting.PRESETS["micro"]
    assert spec.sampler.name == "tpe" and dict(spec.sampler) == {"name": "tpe", "seed": 3}
    with pytest.raises(FileFormatError) as e:
        tiny_spec(train={"bogus": 1})
    allowed = str(e.value).split("allowed: ")[1].split(", ")
    assert allowed == [f.name for f in fields(TrainConfig) if f.name not in ("seed", "distill_weight",
                                                                               "distill_temperature")]
    with pytest.raises(FileFormatError, match=r"train: unknown key\(s\) seed"):
        tiny_spec(train={"seed": 1})  # seeds come from the spec's seeds


@pytest.mark.parametrize("over, msg", [
    ({"sampler": {"name": "nope"}}, "unknown sampler 'nope'; known: "),
    ({"pruner": {"name": "nope"}}, "unknown Optuna pruner 'nope'; known: "),
    ({"sampler": {"name": "tpe", "bogus": 1}}, "unknown argument(s) bogus"),
    ({"objectives": ["accuracy", "macs"]}, "pruners need a single objective"),
    ({"objectives": ["macs"]}, "objectives must be"),
    ({"space": {"family": "less-more-less", "params": {"nope": [0, 1]}}}, "'nope' is not a parameter"),
    ({"space": {"family": "less-more-less", "params": {"plateau": [0.0, 9.0]}}}, "inside the family's bounds"),
    ({"space": {"family": "nope", "params": {}}}, "unknown rule family 'nope'"),
    ({"budget": {"flops": "1G"}}, "budget: give exactly one of"),
    ({"budget": {"latency_ms": 2}}, "needs budget.table"),
    ({"data": {"source": "digits", "bogus": 1}}, "data: unknown key(s) bogus"),
    ({"train": {"epochs": 0}}, "epochs"),
    ({"seeds": [0, 0]}, "seeds must be distinct"),
    ({"setting": "mega"}, "unknown setting 'mega'"),
    ({"extra": 1}, "unknown key(s) extra"),
])
def test_bad_spec_is_one_clear_line(over, msg):
    with pytest.raises(FileFormatError) as e:
        tiny_spec(**over)
    assert msg in str(e.value) and str(e.value).startswith("tiny.yaml: ") and "\n" not in str(e.value)


def test_bad_spec_from_cli_exits_2(tmp_path, cli):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(tiny_doc(sampler={"name": "nope"})))
    code, out, err = cli("search", "run", p, "--storage", tmp_path / "s.db")
    assert code == 2 and "unknown sampler 'nope'; known:" in err and err.count("\n") == 1
    assert not (tmp_path / "s.db").exists()


# storages: one contract suite ------------------------------------------------------------------------
def test_storage_contract(url):
    """Create, write, reopen from a second handle: both see the same trials and attributes."""
    st = open_storage(url)
    name = f"contract-{os.getpid()}-{Path(str(url)).name}"
    s = optuna.create_study(storage=st, study_name=name, direction="maximize")
    s.enqueue_trial({"x": 0.25}, user_attrs={"role": "baseline"})
    s.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    s2 = optuna.load_study(study_name=name, storage=open_storage(url))
    assert [t.state for t in s2.trials] == [TrialState.COMPLETE] * 3
    assert s2.trials[0].params == {"x": 0.25} and s2.trials[0].user_attrs == {"role": "baseline"}
    assert s2.best_value == max(t.value for t in s.trials)


@pytest.mark.parametrize("url, scheme", [("runs/x.db", "sqlite:///runs/x.db"), ("a/b.log", "journal:a/b.log"),
                                         ("postgres://u@h/db", "postgresql://u@h/db"),
                                         ("sqlite:////abs/x.db", "sqlite:////abs/x.db")])
def test_normalize_url(url, scheme):
    assert normalize_url(url) == scheme


@pytest.mark.parametrize("url, msg", [("redis://localhost", "unknown storage 'redis'"),
                                      ("notes.txt", "not a URL and not a file ending in")])
def test_unknown_storage_lists_known(url, msg):
    with pytest.raises(UnknownNameError) as e:
        open_storage(url)
    assert msg in str(e.value) and all(k in str(e.value) for k in STORAGES.names())


def test_unreachable_database_clear_error_nothing_written(tmp_path, cli, monkeypatch):
    from revit.search.testing import free_port

    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(tiny_doc()))
    before = sorted(p.name for p in tmp_path.iterdir())
    url = f"postgresql://revit:secret@127.0.0.1:{free_port()}/studies"
    code, out, err = cli("search", "run", spec, "--storage", url)
    assert code == 2 and err.startswith("revit: error: cannot reach the study database") and err.count("\n") == 1
    assert "secret" not in err and "***" in err  # the password is not printed
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written
    with pytest.raises(StorageError):
        open_storage(url)


def test_worker_needs_existing_study(tmp_path):
    from revit.search.runner import join_study

    with pytest.raises(StorageError, match="no study 'tiny'.*start it with 'revit search run"):
        join_study(tiny_spec(), f"journal:{tmp_path}/j.log")


# objective ---------------------------------------------------------------------------------------------
def test_objective_with_fixed_trial_candidate():
    from revit.search.objective import StudyObjective

    spec = tiny_spec()
    obj = StudyObjective(spec)
    trial = FixedTrial({"plateau": 0.6, "mlp_end": 0.5}, number=7)
    value = obj(trial)
    u = trial.user_attrs
    assert 0.0 <= value <= 1.0 and value == u["val_acc"] and 0.0 <= u["test_acc"] <= 1.0
    assert u["role"] == "candidate" and u["seed"] == 0 and u["group"] == "less-more-less#7"
    assert abs(u["macs"] / 200e3 - 1) <= 0.01  # the budget is met within 1%
    assert len(u["blocks"]) == 2 and len(u["val_curve"]) == 1
    # the config is the rule with the sampled values on top of the base rule's
    from revit.rules import load_rule

    base = load_rule("less-more-less").params
    arm = obj.arm(FixedTrial({"plateau": 0.6, "mlp_end": 0.5}))
    assert arm.rule_params == {**base, "plateau": 0.6, "mlp_end": 0.5}


def test_baseline_outside_its_rule_domain_is_a_typed_error():
    from revit.errors import OutsideDomainError, RuleDomainError
    from revit.search.arms import baseline_arm

    spec = tiny_spec()
    paper = next(b for b in spec.baselines if b.rule == "paper")
    with pytest.raises(RuleDomainError) as e:
        baseline_arm(spec, paper, spec.budget.baseline_values()[0])
    assert isinstance(e.value, OutsideDomainError) and "outside the domain of rule 'paper'" in str(e.value)
    uniform = next(b for b in spec.baselines if b.rule == "uniform")
    assert not baseline_arm(spec, uniform, spec.budget.baseline_values()[0]).generated.outside_domain


def test_objective_with_fixed_trial_baseline_is_uniform_at_same_budget():
    from revit.search.objective import StudyObjective

    obj = StudyObjective(tiny_spec())
    trial = FixedTrial({})
    for k, v in {"role": "baseline", "arm": "uniform", "seed": 1, "budget": 200e3}.items():
        trial.set_user_attr(k, v)
    arm = obj.arm(trial)
    assert arm.role == "baseline" and len(set(arm.config.blocks)) == 1  # uniform blocks
    assert abs(counting.macs(arm.config) / 200e3 - 1) <= 0.01


def test_infeasible_point_is_pruned_with_reason():
    from revit.search.objective import StudyObjective

    obj = StudyObjective(tiny_spec(budget={"macs": "1K"}))
    trial = FixedTrial({"plateau": 0.5, "mlp_end": 0.5})
    with pytest.raises(optuna.TrialPruned):
        obj(trial)
    assert "below the smallest legal config" in trial.user_attrs["infeasible"]


# runner -------------------------------------------------------------------------------------------------
def test_run_study_baselines_candidates_repeats(tmp_path):
    from revit.search.runner import run_study

    spec = tiny_spec()
    url = f"sqlite:///{tmp_path}/s.db"
    ss = run_study(spec, url)
    # one Optuna study per searched family, one for the baselines, all in the same storage
    assert sorted(optuna.study.get_all_study_names(url)) == ["tiny/baselines", "tiny/less-more-less"]
    base, fam = ss.baselines.get_trials(), ss.families["less-more-less"].get_trials()
    # uniform x 2 seeds; paper is outside its domain at this width and is left out, with the reason
    assert sorted((t.user_attrs["arm"], t.user_attrs["seed"]) for t in base) == [("uniform", 0), ("uniform", 1)]
    assert all(t.user_attrs["role"] == "baseline" and t.params == {} for t in base)
    assert any("outside the domain of rule 'paper'" in s for s in ss.user_attrs["skipped_baselines"])
    # one trial per candidate config: its seeds are trained inside it, never as trials of their own
    assert len(fam) == 3 and all(t.user_attrs["role"] == "candidate" and "repeat_of" not in t.user_attrs for t in fam)
    first = {t.number: t.user_attrs["runs"][0]["val_acc"] for t in fam}
    for t in fam:
        runs = t.user_attrs["runs"]
        assert [r["seed"] for r in runs] == [0, 1][:len(runs)] and runs
        if t.state == TrialState.COMPLETE:  # every seed, and the value is their mean
            assert len(runs) == 2 and t.value == pytest.approx(statistics.fmean(r["val_acc"] for r in runs))
            assert t.user_attrs["val_acc"] == t.value
        else:  # stopped: by the median pruner (in its first seed, or its second: step 2), or after its first
            # seed as not among the best top_k (1) first seeds of the configs before it
            assert t.state == TrialState.PRUNED
            by_gate = len(runs) == 1 and 2 not in t.intermediate_values
            assert not by_gate or any(first[n] >= first[t.number] for n in first if n < t.number)
    assert fam[0].state == TrialState.COMPLETE  # the first config has no better one before it
    # Optuna's own view: the family study's best trial is a candidate of that family, never a baseline
    loaded = optuna.load_study(study_name="tiny/less-more-less", storage=url)
    assert loaded.best_trial.user_attrs["role"] == "candidate"
    assert loaded.best_trial.user_attrs["family"] == "less-more-less"
    assert loaded.best_trial.value == max(t.value for t in fam if t.state == TrialState.COMPLETE)
    # resuming adds nothing: baselines are not enqueued twice, the candidate budget is spent
    again = run_study(spec, url)
    assert len(again.trials()) == len(ss.trials()) == 2 + 3


def test_trial_that_raises_fails_and_study_goes_on(tmp_path):
    from revit.search.objective import StudyObjective
    from revit.search.runner import run_worker, tally
    from revit.search.studies import open_studies

    spec = tiny_spec(baselines=[])
    ss = open_studies(spec, f"journal:{tmp_path}/j.log")
    inner = StudyObjective(spec)

    def flaky(trial):
        if trial.number == 1:
            raise RuntimeError("boom")
        return inner(trial)

    stats = run_worker(ss, objective=flaky)
    states = [t.state for t in ss.trials()]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert stats.trials == {"COMPLETE": ["less-more-less#0", "less-more-less#2"], "FAIL": ["less-more-less#1"]}
    assert ss.trials()[1].user_attrs["error"] == "RuntimeError: boom"
    t = tally(ss)
    assert t.unrecovered == ["less-more-less#1"] and t.states == {"COMPLETE": 2, "FAIL": 1}
    assert t.line("tiny") == "study tiny: 3 trials (COMPLETE 2, FAIL 1); 1 failed: less-more-less#1"


def test_stale_trial_of_dead_worker_failed_and_retried_once(tmp_path):
    from revit.search.attrs import HEARTBEAT, WORKER
    from revit.search.runner import recover
    from revit.search.studies import open_studies

    spec = tiny_spec(baselines=[])
    study = open_studies(spec, f"journal:{tmp_path}/j.log").families["less-more-less"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    t = study.ask({"plateau": optuna.distributions.FloatDistribution(0.2, 1.0)})
    t.set_user_attr(WORKER, f"{__import__('socket').gethostname()}:{dead.pid}")
    t.set_user_attr(HEARTBEAT, 0.0)
    alive = study.ask()
    alive.set_user_attr(WORKER, f"{__import__('socket').gethostname()}:{os.getpid()}")
    assert recover(study, spec.grace_s) == [t.number]
    trials = study.get_trials()
    assert trials[t.number].state == TrialState.FAIL and trials[alive.number].state == TrialState.RUNNING
    retry = [x for x in trials if x.user_attrs.get("retry_of") == t.number]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING
    assert retry[0].system_attrs["fixed_params"] == t.params
    assert recover(study, spec.grace_s) == []  # nothing twice


def test_report_groups_mean_std_and_files(tmp_path):
    from revit.search.report import config_results, pareto_front, write_report
    from revit.search.runner import run_study

    spec = tiny_spec(n_trials=2)
    ss = run_study(spec, f"sqlite:///{tmp_path}/s.db")
    summary = write_report(spec, ss, tmp_path / "rep")
    for name in ("report.md", "report.json", "accuracy_vs_macs.png", "best_blocks.png", "history.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    uni = [t.user_attrs["test_acc"] for t in ss.trials() if t.user_attrs.get("arm") == "uniform"]
    g = next(g for g in config_results(ss.trials()) if g.arm == "uniform")
    assert g.n == 2 and g.mean_std("test_acc") == pytest.approx((statistics.fmean(uni), statistics.stdev(uni)))
    c = summary["comparison"]
    assert c["uniform_n"] == 2 and c["best_n"] == 2  # the best candidate was repeated with seed 1
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "optuna-dashboard" in md and "| uniform@200.00K MACs | baseline |" in md
    assert "`tiny/less-more-less`" in md and "`tiny/baselines`" in md
    assert pareto_front([(1, 0.5), (2, 0.4), (2, 0.7), (3, 0.6), (0.5, 0.1)]) == [4, 0, 2]


def test_search_cli_run_report(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(tiny_doc(n_trials=1, seeds=[0], baselines=[{"rule": "uniform"}])))
    code, out, err = cli("search", "run", p, "--quiet")
    assert code == 0 and err.splitlines()[-1] == "study tiny: 2 trials (COMPLETE 2)"
    assert (tmp_path / "runs" / "studies" / "tiny.db").is_file()  # the default storage
    code, out, err = cli("search", "status", p, "--json")
    assert code == 0 and json.loads(out)["states"] == {"COMPLETE": 2} and json.loads(out)["candidates"] == {
        "less-more-less": 1}
    code, out, err = cli("search", "report", p, "--out", "rep")
    assert code == 0 and "best candidate less-more-less#0: test top-1" in out and "(n = 1)" in out
    assert (tmp_path / "rep" / "report.md").is_file()
    code, out, err = cli("search", "report", p, "--out", "rep2", "--json")
    assert code == 0 and json.loads(out)["families"]["less-more-less"]["trials"] == ["less-more-less#0"]


def test_search_parser_is_light():
    code = ("import sys; from revit.cli.main import build_parser; build_parser(); "
            "print('torch' in sys.modules, 'optuna' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_unknown_spec_name_lists_shipped():
    with pytest.raises(UnknownNameError, match="shipped: fashion-mnist, imagenet-deit-s, smoke"):
        load_spec("nope")
    with pytest.raises(FileFormatError, match="x: .*budget"):
        StudySpec.from_dict(tiny_doc(budget={"macs": 0}), "x")


def test_multi_objective_study_with_searched_budget(tmp_path):
    """accuracy + MACs with NSGA-II and the budget searched: two values per trial, baselines at 3 budgets."""
    from revit.search.report import write_report
    from revit.search.runner import run_study

    spec = tiny_spec(objectives=["accuracy", "macs"], pruner={"name": "none"},
                     sampler={"name": "nsga2", "seed": 0, "population_size": 2},
                     budget={"macs": {"low": "150K", "high": "400K"}}, seeds=[0], n_trials=2,
                     baselines=[{"rule": "uniform"}])
    assert spec.directions == ["maximize", "minimize"]
    ss = run_study(spec, f"journal:{tmp_path}/j.log")
    trials = [t for t in ss.trials() if t.state == TrialState.COMPLETE]
    assert len(trials) == len(ss.trials())  # NSGA-II on its family's own study: no trial fails
    base = sorted(t.user_attrs["budget"] for t in trials if t.user_attrs["role"] == "baseline")
    assert base == pytest.approx([150e3, (150e3 * 400e3) ** 0.5, 400e3])
    for t in trials:
        assert len(t.values) == 2 and t.values[1] == t.user_attrs["macs"]
        assert abs(t.user_attrs["macs"] / t.user_attrs["budget"] - 1) <= 0.01
    cands = [t for t in trials if t.user_attrs["role"] == "candidate"]
    assert len(cands) == 2 and all(150e3 <= t.params["budget"] <= 400e3 for t in cands)
    write_report(spec, ss, tmp_path / "rep")
    assert (tmp_path / "rep" / "accuracy_vs_macs.png").is_file()


def test_other_seeds_only_for_a_first_seed_among_the_best_so_far(tmp_path):
    """A candidate goes on to its other seeds when its first seed ranks among its family's best ``top_k`` first
    seeds so far: configs still running in other workers count, a failed trial counts only through its retry."""
    from revit.search.objective import _among_best
    from revit.search.studies import open_studies

    ss = open_studies(tiny_spec(baselines=[]), f"journal:{tmp_path}/j.log")
    study = ss.families["less-more-less"]
    dist = {"plateau": optuna.distributions.FloatDistribution(0.2, 1.0)}

    def trial(first, state=None):
        t = study.ask(dist)
        t.set_user_attr("group", f"less-more-less#{t.number}")
        t.set_user_attr("runs", [{"seed": 0, "val_acc": first, "test_acc": first, "val_curve": [first],
                                  "train_seconds": 1.0}])
        if state is not None:
            study.tell(t, 0.5 if state == TrialState.COMPLETE else None, state=state)
        return t

    trial(0.5, TrialState.COMPLETE)
    trial(0.9)  # running in another worker
    trial(0.95, TrialState.FAIL)  # counts through its retry only
    me = trial(0.7)
    assert not _among_best(me, 0.7, 1) and _among_best(me, 0.91, 1)
    assert _among_best(me, 0.7, 2) and not _among_best(me, 0.4, 2)
    assert _among_best(FixedTrial({}), 0.0, 1)  # off a study: every seed


def test_a_failed_trial_whose_retry_runs_elsewhere_is_pending_not_failed(tmp_path):
    from revit.search.runner import tally
    from revit.search.studies import open_studies

    ss = open_studies(tiny_spec(baselines=[]), f"sqlite:///{tmp_path}/s.db")
    study = ss.families["less-more-less"]
    dist = {"plateau": optuna.distributions.FloatDistribution(0.2, 1.0)}
    dead = study.ask(dist)
    study.tell(dead, state=TrialState.FAIL)
    retry = study.ask(dist)  # running in another worker
    retry.set_user_attr("retry_of", dead.number)
    t = tally(ss)
    assert t.unrecovered == [] and t.pending == [f"less-more-less#{dead.number}"]
    study.tell(retry, state=TrialState.FAIL)  # the retry failed too: now it counts
    assert tally(ss).unrecovered == [f"less-more-less#{dead.number}", f"less-more-less#{retry.number}"]
