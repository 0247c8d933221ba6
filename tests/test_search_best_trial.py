"""A family study read with Optuna's own tools: its best trial is the config the report ranks first.

Each test runs a whole study (baselines, candidates with 2 seeds, the second for the best first seeds) with
a closed-form objective of the sampled parameters, twisted so that the second seed reverses the
first seed's order: the config with the best single seed is then not the one with the best mean.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from revit.search.report import write_report
from revit.search.runner import run_study
from revit.search.spec import StudySpec
from revit.search.testing import _quick_objective_class, tiny_study_doc

optuna.logging.set_verbosity(optuna.logging.WARNING)


def twisted_objective(spec: StudySpec) -> Any:
    """A closed-form objective (the runner's real path, no training): seed 0 scores a config ``s`` in [0.5, 0.95]
    and seed 1 ``2 - 2 s``, so the mean over seeds falls as the first seed rises: the best single seed is never
    the best config."""

    class Twisted(_quick_objective_class()):  # type: ignore[misc]
        def arm(self, trial: Any) -> Any:
            arm = super().arm(trial)
            self.params = dict(trial.params)  # the score is a function of the sampled parameters
            return arm

        def train(self, cfg: Any, seed: int, trial: Any = None, step0: int = 0) -> tuple[float, float, list[float],
                                                                                        float]:
            score = 0.5 + 0.45 * ((7.31 * sum(self.params.values())) % 1)
            val = score if seed == 0 else 2 - 2 * score
            return val, val - 0.01, [val], 0.0

    return Twisted(spec)


def spec_of(**over: Any) -> StudySpec:
    doc = tiny_study_doc(n_trials=6, seeds=[0, 1], repeats={"top_k": 3}, pruner={"name": "none"},
                         baselines=[{"rule": "uniform"}])
    doc["space"] = [doc["space"], {"family": "uniform", "params": {"head_dim": [4, 12], "mlp_ratio": [1.0, 4.0]}}]
    doc.update(over)
    return StudySpec.from_dict(doc, "tiny.yaml")


def study_and_report(spec: StudySpec, tmp_path: Any) -> tuple[str, dict[str, Any]]:
    url = f"sqlite:///{tmp_path}/s.db"
    ss = run_study(spec, url, objective=twisted_objective(spec))
    write_report(spec, ss, tmp_path / "report")
    return url, json.loads((tmp_path / "report" / "report.json").read_text())


def test_best_trial_of_each_family_study_is_the_config_the_report_ranks_first(tmp_path):
    spec = spec_of()
    url, report = study_and_report(spec, tmp_path)
    for fam in spec.family_names:
        study = optuna.load_study(study_name=f"tiny/{fam}", storage=url)
        best = study.best_trial
        fb = report["families"][fam]  # the report's best config of the family, and its row
        row = next(g for g in report["groups"] if g["group"] == fb["best"])
        assert row["n"] == 2  # the trap of a best single seed is set: the best config has both seeds
        assert best.params == row["params"]
        assert row["trials"] == [f"{fam}#{best.number}"]  # one trial is the whole config
        # ranked first among the family's rows too
        assert row == next(g for g in report["groups"] if g["family"] == fam and g["role"] == "candidate")
        first = row
        assert best.user_attrs["blocks"] == first["blocks"] and best.user_attrs["embed_dim"] == first["embed_dim"]
        # its value is the config's mean held-out top-1 over its seeds, as the report's
        assert best.value == pytest.approx(first["val"][0]) and fb["params"] == best.params
        assert best.value == pytest.approx(statistics.fmean(r["val_acc"] for r in best.user_attrs["runs"]))
        assert study.metric_names == ["val_acc"]  # optuna-dashboard's label of the objective


def test_best_trials_of_a_two_objective_family_study_are_the_reports_pareto_set(tmp_path):
    spec = spec_of(objectives=["accuracy", "macs"], budget={"macs": {"low": "150K", "high": "400K"}},
                   sampler={"name": "nsga2", "seed": 0, "population_size": 4})
    url, report = study_and_report(spec, tmp_path)
    for fam in spec.family_names:
        study = optuna.load_study(study_name=f"tiny/{fam}", storage=url)
        assert any(len(t.user_attrs.get("runs", [])) > 1 for t in study.trials)
        front = sorted(f"{fam}#{t.number}" for t in study.best_trials)
        assert front and sorted(report["pareto"][fam]) == front
        # and independently of the report: the Pareto set of the configs' means over their seeds
        done = [t for t in study.trials if t.state == TrialState.COMPLETE]
        pts = {t.number: (t.user_attrs["macs"], statistics.fmean(r["val_acc"] for r in t.user_attrs["runs"]))
               for t in done}
        kept = [n for n, (m, a) in pts.items() if not any(m2 <= m and a2 >= a and (m2, a2) != (m, a)
                                                          for m2, a2 in pts.values())]
        assert sorted(f"{fam}#{n}" for n in kept) == front


def test_objectives_are_named_and_trials_dataframe_has_one_row_per_config(tmp_path):
    spec = spec_of(objectives=["accuracy", "macs"], sampler={"name": "tpe", "seed": 0}, baselines=[])
    url = f"sqlite:///{tmp_path}/s.db"
    run_study(spec, url, objective=twisted_objective(spec))
    for part in ("baselines", *spec.family_names):
        assert optuna.load_study(study_name=f"tiny/{part}", storage=url).metric_names == ["val_acc", "macs"]
    study = optuna.load_study(study_name="tiny/less-more-less", storage=url)
    df = study.trials_dataframe()  # needs pandas: a dependency of revit
    params = [c for c in df.columns if c.startswith("params_")]
    assert len(df) == spec.n_trials == len(df[params].drop_duplicates())  # one row per candidate config
    assert {"values_val_acc", "values_macs", "user_attrs_runs"} <= set(df.columns)


def test_a_candidate_stopped_in_its_second_seed_is_retried_without_training_its_first_again(tmp_path):
    spec = spec_of(baselines=[], n_trials=2)
    url = f"sqlite:///{tmp_path}/s.db"
    trained: list[tuple[float, int]] = []

    def counted(stop_in_second_seed: bool) -> Any:
        """The twisted objective, logging each (config, seed) it trains; optionally Ctrl-C in a second seed."""
        obj = twisted_objective(spec)
        inner = obj.train

        def train(cfg: Any, seed: int, trial: Any = None, step0: int = 0) -> Any:
            if stop_in_second_seed and seed == 1:
                raise KeyboardInterrupt
            trained.append((sum(obj.params.values()), seed))
            return inner(cfg, seed, trial, step0)

        obj.train = train
        return obj

    with pytest.raises(KeyboardInterrupt):
        run_study(spec, url, objective=counted(True))
    ss = run_study(spec, url, objective=counted(False))
    study = ss.families["less-more-less"]
    stopped = study.trials[0]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["interrupted"] is True
    assert [r["seed"] for r in stopped.user_attrs["runs"]] == [0]
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == 0)
    assert retry.state == TrialState.COMPLETE and retry.params == stopped.params
    assert retry.user_attrs["runs"][0] == stopped.user_attrs["runs"][0]  # its first seed, kept, not trained again
    assert [r["seed"] for r in retry.user_attrs["runs"]] == [0, 1]
    assert len(trained) == len(set(trained)) and (sum(stopped.params.values()), 0) in trained  # none twice


def test_a_study_of_the_previous_version_is_reported_and_never_resumed(tmp_path, cli):
    """revit <= 0.1.0 kept each seed repeat as a trial of its own (``repeat_of``): the report still gathers a
    config's seeds by ``group``; ``run`` refuses to add all-seed trials beside them, in one line."""
    import yaml

    from revit.search.studies import SPEC_ATTR, open_studies

    doc = tiny_study_doc(baselines=[])
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    spec = StudySpec.load(path)
    url = f"sqlite:///{tmp_path}/old.db"
    ss = open_studies(spec, url)
    fam = ss.families["less-more-less"]
    for _, part in ss.parts():  # stamped as the previous version stamped its parts: no layout
        part.set_user_attr(SPEC_ATTR, {k: v for k, v in part.user_attrs[SPEC_ATTR].items() if k != "layout"})
    dist = {"plateau": optuna.distributions.FloatDistribution(0.2, 1.0)}
    cfg = {"macs": 200e3, "params": 40e3, "embed_dim": 40, "mlp_factor": 1.0, "blocks": [[2, 8, 8, 64]] * 2,
           "role": "candidate", "family": "less-more-less", "arm": "less-more-less-search"}
    for plateau, seed, group, val, extra in [(0.3, 0, "less-more-less#0", 0.6, {}),
                                             (0.3, 1, "less-more-less#0", 0.8, {"repeat_of": 0}),
                                             (0.9, 0, "less-more-less#2", 0.75, {})]:
        fam.add_trial(optuna.trial.create_trial(
            params={"plateau": plateau}, distributions=dist, value=val,
            user_attrs={**cfg, "seed": seed, "group": group, "val_acc": val, "test_acc": val - 0.1, **extra}))
    code, out, err = cli("search", "report", path, "--storage", url, "--out", tmp_path / "rep", "--json")
    assert code == 0, err
    best = json.loads(out)["families"]["less-more-less"]
    assert (best["best"], best["n"]) == ("less-more-less#0", 2) and best["val"][0] == pytest.approx(0.7)
    code, _, err = cli("search", "run", path, "--storage", url)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "earlier revit" in err and "--storage NEW_URL" in err and "report" in err
    assert len(fam.get_trials()) == 3  # nothing added


def test_the_pruner_stops_a_bad_config_early_and_the_seeds_are_its_next_steps(tmp_path):
    """Seed ``i``'s epoch ``e`` is the pruner's step ``i * epochs + e``: a config that falls behind in its first seed
    is stopped there (PRUNED, no other seed trained), as Optuna's median pruner decides."""
    spec = spec_of(baselines=[], n_trials=2, train={"epochs": 2, "batch_size": 64},
                   pruner={"name": "median", "n_startup_trials": 1})
    trained: list[tuple[int, int]] = []

    class SecondConfigBad(_quick_objective_class()):  # type: ignore[misc]
        def train(self, cfg: Any, seed: int, trial: Any = None, step0: int = 0) -> tuple[float, float, list[float],
                                                                                        float]:
            val = 0.3 if trial.number == 1 else 0.8
            curve = []
            for e in range(2):
                curve.append(val)
                trial.report(val, step0 + e + 1)
                if trial.should_prune():
                    raise optuna.TrialPruned()
            trained.append((trial.number, seed))
            return val, val, curve, 0.0

    ss = run_study(spec, f"sqlite:///{tmp_path}/s.db", objective=SecondConfigBad(spec))
    first, bad = ss.families["less-more-less"].get_trials()
    assert first.state == TrialState.COMPLETE and [r["seed"] for r in first.user_attrs["runs"]] == [0, 1]
    assert sorted(first.intermediate_values) == [1, 2, 3, 4]  # two seeds of two epochs: four steps
    assert bad.state == TrialState.PRUNED and list(bad.intermediate_values) == [1] and "runs" not in bad.user_attrs
    assert (1, 0) not in trained and (1, 1) not in trained
