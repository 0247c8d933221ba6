"""Every Optuna sampler revit offers, with two searched families, through the path ``revit search run`` takes.

Each case runs :func:`revit.search.runner.run_study` (baselines, candidates, repeats) with the real
objective path (the family suggests, the config is generated for the budget) and a closed-form score in
place of training, single-objective and, where the sampler handles it, with accuracy and MACs.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from revit.errors import FileFormatError
from revit.search.spec import StudySpec
from revit.search.testing import quick_objective, tiny_study_doc

optuna.logging.set_verbosity(optuna.logging.WARNING)

LML = {"family": "less-more-less", "base": "less-more-less", "params": {"plateau": [0.2, 1.0], "mlp_end": [0.25, 1.0]}}
UNI = {"family": "uniform", "params": {"head_dim": [8, 32], "mlp_ratio": [1.5, 6.0]}}
# brute force needs a finite space: two uniform families searching integer head widths only
FINITE = [{"family": "uniform", "name": "narrow-heads", "params": {"head_dim": [8, 12]}},
          {"family": "uniform", "name": "wide-heads", "params": {"head_dim": [16, 20]}}]
CLASSES = {"tpe": "TPESampler", "gp": "GPSampler", "cmaes": "CmaEsSampler", "nsga2": "NSGAIISampler",
           "nsga3": "NSGAIIISampler", "qmc": "QMCSampler", "random": "RandomSampler",
           "bruteforce": "BruteForceSampler"}
SINGLE_ONLY = {"cmaes"}
CASES = [(name, n) for name in CLASSES for n in (1, 2) if not (n == 2 and name in SINGLE_ONLY)]


def _spec(sampler: str, n_objectives: int, tmp_path) -> StudySpec:
    doc = tiny_study_doc(
        sampler={"name": sampler, "seed": 0}, n_trials=3, seeds=[0, 1], repeats={"top_k": 1},
        space=FINITE if sampler == "bruteforce" else [LML, UNI], baselines=[{"rule": "uniform"}],
        objectives=["accuracy", "macs"][:n_objectives],
        pruner={"name": "median", "n_startup_trials": 1} if n_objectives == 1 else {"name": "none"})
    return StudySpec.from_dict(doc, str(tmp_path / "s.yaml"))


@pytest.mark.parametrize("sampler, n_objectives", CASES, ids=[f"{s}-{n}obj" for s, n in CASES])
def test_sampler_serves_two_families(sampler, n_objectives, tmp_path):
    from revit.search.runner import run_study, tally

    spec = _spec(sampler, n_objectives, tmp_path)
    ss = run_study(spec, f"sqlite:///{tmp_path}/s.db", objective=quick_objective(spec))
    t = tally(ss)
    assert t.unrecovered == [] and set(t.states) <= {"COMPLETE", "PRUNED"}, t.states
    assert len(ss.families) == 2
    for fam, study in ss.families.items():
        assert type(study.sampler.sampler).__name__ == CLASSES[sampler]  # seeded per trial (PerTrialSeed)
        trials = study.get_trials()
        originals = [x for x in trials if "repeat_of" not in x.user_attrs]
        assert len(originals) == 3 and {x.user_attrs["family"] for x in trials} == {fam}
        done = [x for x in trials if x.state == TrialState.COMPLETE]
        assert done and all(len(x.values) == n_objectives for x in done)
        if n_objectives == 2:
            assert all(x.values[1] == x.user_attrs["macs"] for x in done)
            assert {x.user_attrs["role"] for x in study.best_trials} == {"candidate"}
        else:
            assert study.best_trial.user_attrs["role"] == "candidate"
        if sampler == "bruteforce":  # every point of the finite space once: head_dim 8, 12 or 16, 20
            assert len({x.params["head_dim"] for x in originals}) == 2
    assert [x.user_attrs["seed"] for x in ss.baselines.get_trials()] == [0, 1]


@pytest.mark.parametrize("doc, msg", [
    ({"sampler": {"name": "cmaes"}, "objectives": ["accuracy", "macs"], "pruner": {"name": "none"}},
     "sampler 'cmaes' handles one objective only"),
    ({"sampler": {"name": "bruteforce"}}, "sampler 'bruteforce' needs a finite space"),
    ({"sampler": {"name": "gp", "n_startup_trials": "x"}}, "sampler.n_startup_trials must be an integer"),
    ({"sampler": {"name": "tpe", "seed": "abc"}}, "sampler.seed must be an integer"),
    ({"sampler": {"name": "tpe", "seed": float("nan")}}, "sampler.seed must be an integer"),
    ({"sampler": {"name": "tpe", "seed": [1]}}, "sampler.seed must be an integer"),
    ({"sampler": {"name": "tpe", "seed": 2**40}}, "sampler.seed must be an integer in"),
    ({"sampler": {"name": "annealing"}}, "unknown sampler 'annealing'"),
])
def test_a_sampler_that_cannot_serve_the_spec_is_refused_before_any_storage(doc, msg, tmp_path):
    with pytest.raises(FileFormatError, match=msg):
        StudySpec.from_dict(tiny_study_doc(**doc), "s.yaml")
    assert list(tmp_path.iterdir()) == []
