"""Several searched families in one study: spec, the uniform family, per-family samplers and pruners,
enqueued candidates per family, and the report's Welch intervals against an independent computation."""

from __future__ import annotations

import math
import statistics

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FixedTrial, TrialState, create_trial
from scipy import stats

from revit import counting
from revit.errors import FileFormatError
from revit.search.spec import StudySpec
from revit.search.testing import tiny_study_doc

optuna.logging.set_verbosity(optuna.logging.WARNING)

LML = {"family": "less-more-less", "base": "less-more-less", "params": {"plateau": [0.2, 1.0], "mlp_end": [0.25, 1.0]}}
UNI = {"family": "uniform", "params": {"head_dim": [8, 32], "mlp_ratio": [1.5, 6.0]}}


def two_family_spec(**over) -> StudySpec:
    return StudySpec.from_dict(tiny_study_doc(space=[LML, UNI], **over), "two.yaml")


# spec ------------------------------------------------------------------------------------------------
def test_space_list_parses_each_family_and_a_mapping_still_works():
    spec = two_family_spec()
    assert spec.family_names == ["less-more-less", "uniform"]
    lml, uni = spec.spaces
    assert [p.name for p in lml.params] == ["plateau", "mlp_end"] and lml.base_rule == "less-more-less"
    hd, ratio = uni.params
    # head_dim is an integer parameter on the granularity's QK step (micro at 8 px: 4); mlp_ratio a float
    assert (hd.name, hd.low, hd.high, hd.step) == ("head_dim", 8, 32, 4) and ratio.step is None
    assert spec.optuna_name(uni, "head_dim") == "uniform.head_dim"
    one = StudySpec.from_dict(tiny_study_doc(space=LML), "one.yaml")
    assert one.family_names == ["less-more-less"] and one.optuna_name(one.spaces[0], "plateau") == "plateau"
    assert one.family == "less-more-less" and one.base_rule == "less-more-less"


@pytest.mark.parametrize("space, msg", [
    ([LML, LML], "two families have the same name"),
    ([LML, {"family": "uniform", "params": {"head_dim": [8, 30]}}], "multiple of the step 4"),
    ([LML, {"family": "uniform", "params": {"head_dim": {"low": 8, "high": 32, "step": 8, "log": True}}}],
     "log range of an integer parameter needs step 1"),
    ([LML, {"family": "uniform", "params": {"plateau": [0.2, 1.0]}}], "'plateau' is not a parameter of family"),
    ([LML, {"family": "uniform", "name": "uni form", "params": {"mlp_ratio": [1, 2]}}], "space[1].name must be"),
    ([], "or a list of such mappings"),
])
def test_bad_space_list_is_one_clear_line(space, msg):
    with pytest.raises(FileFormatError) as e:
        StudySpec.from_dict(tiny_study_doc(space=space), "two.yaml")
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_uniform_heads_per_emb_sets_the_head_count():
    from revit.config import Granularity
    from revit.rules import Rule

    gran = Granularity.parse("micro", 28)
    blocks = Rule("u", "uniform", {"head_dim": 12, "mlp_ratio": 2.0, "heads_per_emb": 0.25}).blocks(64, 3, gran)
    assert {(b.heads, b.qk_dim, b.v_dim, b.mlp_dim) for b in blocks} == {(16, 12, 12, 128)}
    default = Rule("u", "uniform", {"head_dim": 16, "mlp_ratio": 2.0}).blocks(64, 3, gran)
    assert default[0].heads == 4  # 0: EMB / head_dim, as before


def test_uniform_candidate_is_generated_for_the_budget_like_generate_uniform():
    """A searched uniform trial: sampled head_dim and MLP ratio, EMB solved as `revit generate --uniform`."""
    from revit.rules import SearchSpace, generate, macs_budget, uniform_rule
    from revit.search.objective import StudyObjective

    spec = two_family_spec()
    trial = FixedTrial({"uniform.head_dim": 16, "uniform.mlp_ratio": 3.0}, number=4)
    trial.set_user_attr("family", "uniform")
    arm = StudyObjective(spec).arm(trial)
    want = generate(uniform_rule(head_dim=16, mlp_ratio=3.0), macs_budget("200K"), spec.setting, space=SearchSpace())
    assert arm.family == "uniform" and arm.role == "candidate" and arm.config.blocks == want.config.blocks
    assert arm.config.embed_dim == want.config.embed_dim
    assert {(b.qk_dim, b.v_dim) for b in arm.config.blocks} == {(16, 16)}
    assert abs(counting.macs(arm.config) / 200e3 - 1) <= 0.01


# per-family sampler and pruner -----------------------------------------------------------------------------
def _add(study, family, value, curve, number_role="candidate"):
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=value, params={"x": value},
                                 distributions={"x": FloatDistribution(0, 1)},
                                 intermediate_values=dict(enumerate(curve)),
                                 user_attrs={"role": number_role, "family": family}))


def _mixed_study():
    """Family A learns fast (high curves), family B slowly; one running B trial to judge."""
    study = optuna.create_study(direction="maximize")
    for v in (0.90, 0.92, 0.94, 0.96):
        _add(study, "A", v, [v - 0.1, v - 0.05, v])
    for v in (0.50, 0.52, 0.54, 0.56):
        _add(study, "B", v, [v - 0.1, v - 0.05, v])
    return study


def _running(study, family, curve):
    t = study.ask()
    t.set_user_attr("family", family)
    for step, v in enumerate(curve):
        t.report(v, step)
    return study._storage.get_trial(t._trial_id)


class _Recording(optuna.pruners.MedianPruner):
    """A median pruner that records the families of every trial it is shown."""

    seen: list[str]

    def prune(self, study, trial):
        self.seen = [t.user_attrs.get("family") for t in study.get_trials(deepcopy=False)]
        return super().prune(study, trial)


def test_family_pruner_compares_only_within_the_family():
    from revit.search.perfamily import FamilyPruner

    study = _mixed_study()
    frozen = _running(study, "B", [0.48, 0.53])  # above B's median at step 1, far below A's
    made: list[_Recording] = []

    def make():
        made.append(_Recording(n_startup_trials=1))
        return made[-1]

    fp = FamilyPruner(make, default="A")
    assert fp.prune(study, frozen) is False
    assert set(made[0].seen) == {"B"}  # it never saw a trial of family A
    assert bool(optuna.pruners.MedianPruner(n_startup_trials=1).prune(study, frozen))  # a global one prunes
    low = _running(study, "B", [0.30, 0.35])
    assert fp.prune(study, low) is True  # below its own family's median: pruned
    assert len(made) == 1  # one pruner instance per family


PRUNERS = {
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=1),
    "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=3, reduction_factor=2),
    "percentile": lambda: optuna.pruners.PercentilePruner(40.0, n_startup_trials=1),
}


@pytest.mark.parametrize("name", ["median", "percentile"])
def test_family_pruner_equals_the_pruner_on_a_study_of_that_family_alone(name):
    """Independent check: the same decisions as the plain pruner on a study holding only family B."""
    from revit.search.perfamily import FamilyPruner

    make = PRUNERS[name]
    mixed = _mixed_study()
    alone = optuna.create_study(study_name=mixed.study_name, direction="maximize")
    for t in mixed.get_trials():
        if t.user_attrs["family"] == "B":
            _add(alone, "B", t.value, [t.intermediate_values[k] for k in sorted(t.intermediate_values)])
    decisions = []
    for curve in ([0.30, 0.35, 0.40], [0.45, 0.50, 0.55], [0.42, 0.47, 0.66]):
        a, b = _running(mixed, "B", curve), _running(alone, "B", curve)
        got = bool(FamilyPruner(make, default="A").prune(mixed, a))
        assert got == bool(make().prune(alone, b)), curve
        decisions.append((got, bool(make().prune(mixed, a))))
    assert (False, True) in decisions  # a case where a pruner over both families would have pruned


def _run(pruner, name):
    """Four fast family-A trials, then four slowly rising family-B trials, through ``pruner``."""
    study = optuna.create_study(study_name=name, direction="maximize", pruner=pruner)
    plan = [("A", v) for v in (0.90, 0.92, 0.94, 0.96)] + [("B", v) for v in (0.50, 0.52, 0.54, 0.56)]
    for fam, _ in plan:
        study.enqueue_trial({}, user_attrs={"role": "candidate", "family": fam})

    def objective(trial):
        v = plan[trial.number][1]
        for step, x in enumerate((v - 0.1, v - 0.05, v)):
            trial.report(x, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return v

    study.optimize(objective, n_trials=len(plan))
    return [(t.user_attrs["family"], t.state) for t in study.get_trials()]


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_family_pruner_in_a_study_never_prunes_against_another_family(name):
    """Family B's trials rise within B, so B alone never prunes them; a pruner over both families does."""
    from revit.search.perfamily import FamilyPruner

    per_family = _run(FamilyPruner(PRUNERS[name], default="A"), "s")
    shared = _run(PRUNERS[name](), "s")  # the same study name: hyperband puts each trial in the same bracket
    assert [st for fam, st in per_family if fam == "B"] == [TrialState.COMPLETE] * 4
    assert TrialState.PRUNED in [st for fam, st in shared if fam == "B"]


def test_family_sampler_feeds_each_family_only_its_own_trials():
    from revit.search.perfamily import FamilySampler

    class Recording(optuna.samplers.RandomSampler):
        def __init__(self, seed):
            super().__init__(seed)
            self.seen: list[set] = []

        def sample_independent(self, study, trial, name, dist):
            self.seen.append({t.user_attrs.get("family") for t in study.get_trials(deepcopy=False)
                              if t.number != trial.number})
            return super().sample_independent(study, trial, name, dist)

    inner = {"A": Recording(0), "B": Recording(1)}
    study = _mixed_study()
    study.sampler = FamilySampler(inner, default="A")
    for fam in ("B", "A", "B"):
        study.enqueue_trial({}, user_attrs={"role": "candidate", "family": fam})
        t = study.ask()
        t.suggest_float("x", 0, 1)
        study.tell(t, 0.5)
    assert inner["A"].seen == [{"A"}] and inner["B"].seen == [{"B"}, {"B"}]


def test_family_samplers_get_their_own_seeds():
    from revit.search.samplers import build_family_sampler

    fs = build_family_sampler({"name": "random", "seed": 5}, ["a", "b"])
    study = optuna.create_study()

    def draws(sampler):
        return [sampler.sample_independent(study, create_trial(value=0.0), "x", FloatDistribution(0, 1))
                for _ in range(3)]

    assert draws(fs.samplers["a"]) == draws(optuna.samplers.RandomSampler(5))
    assert draws(fs.samplers["b"]) == draws(optuna.samplers.RandomSampler(6))


def test_candidates_are_enqueued_round_robin_up_to_n_trials_per_family(tmp_path):
    from revit.search.runner import enqueue_candidates, open_study

    spec = two_family_spec(n_trials=3)
    study = open_study(spec, f"journal:{tmp_path}/j.log")
    study.enqueue_trial({}, user_attrs={"role": "baseline", "arm": "uniform", "seed": 0, "budget": 200e3})
    assert enqueue_candidates(spec, study) == 6
    tags = [t.user_attrs.get("family") for t in study.get_trials()]
    assert tags == [None] + ["less-more-less", "uniform"] * 3  # the baseline counts for no family
    assert enqueue_candidates(spec, study) == 0  # resuming adds nothing
    # a worker's top-up (at most one at a time) goes to the family with the fewest
    study.enqueue_trial({}, user_attrs={"role": "candidate", "family": "uniform"})
    assert enqueue_candidates(spec, study, 4, at_most=1) == 1
    assert study.get_trials()[-1].user_attrs["family"] == "less-more-less"
    assert enqueue_candidates(spec, study, 4, at_most=1) == 0


# end to end ------------------------------------------------------------------------------------------------
def _welch_by_hand(a, b):
    """Welch's difference, 95% interval and p-value from the formulas (numpy + the t distribution)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    diff = a.mean() - b.mean()
    half = stats.t.ppf(0.975, df) * se
    return diff, diff - half, diff + half, 2 * stats.t.sf(abs(diff / se), df)


def test_two_family_study_end_to_end_with_intervals(tmp_path):
    from revit.search.report import write_report
    from revit.search.runner import run_study

    spec = two_family_spec(n_trials=2, pruner={"name": "median", "n_startup_trials": 1}, seeds=[0, 1],
                           baselines=[{"rule": "uniform"}])
    study = run_study(spec, f"journal:{tmp_path}/j.log", log=lambda m: None)
    trials = study.get_trials()
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    cands = [t for t in trials if t.user_attrs["role"] == "candidate"]
    originals = [t for t in cands if "repeat_of" not in t.user_attrs]
    # the same number of sampled candidates per family, each tagged, each with its own parameter names
    assert sorted(t.user_attrs["family"] for t in originals) == ["less-more-less"] * 2 + ["uniform"] * 2
    for t in originals:
        prefix = t.user_attrs["family"] + "."
        assert t.params and all(k.startswith(prefix) for k in t.params)
    for t in [t for t in trials if t.state == TrialState.COMPLETE]:
        assert abs(t.user_attrs["macs"] / 200e3 - 1) <= 0.01
        if t.user_attrs["family"] == "uniform":  # a searched uniform config: equal blocks, QK = V per head
            blocks = {tuple(b) for b in t.user_attrs["blocks"]}
            assert len(blocks) == 1 and next(iter(blocks))[1] == next(iter(blocks))[2] == t.params["uniform.head_dim"]
    base = [t for t in trials if t.user_attrs["role"] == "baseline"]
    assert {(t.user_attrs["family"], t.user_attrs["seed"]) for t in base} == {("baseline:uniform", 0),
                                                                              ("baseline:uniform", 1)}
    # each family's best original (held-out, seed 0) is repeated with seed 1, in its own family
    repeats = [t for t in cands if "repeat_of" in t.user_attrs]
    best = {}
    for fam in ("less-more-less", "uniform"):
        done = [t for t in originals if t.user_attrs["family"] == fam and t.state == TrialState.COMPLETE]
        best[fam] = max(done, key=lambda t: t.value)
        rep = [t for t in repeats if t.user_attrs["repeat_of"] == best[fam].number]
        assert len(rep) == 1 and rep[0].user_attrs["family"] == fam and rep[0].params == best[fam].params
    assert len(repeats) == 2

    summary = write_report(spec, study, tmp_path / "rep")
    for name in ("report.md", "report.json", "accuracy_vs_macs.png", "comparison.png", "history.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    # the headline: best less-more-less minus best searched uniform, against the formulas
    test = {fam: [t.user_attrs["test_acc"] for t in trials if t.state == TrialState.COMPLETE
                  and t.user_attrs.get("group") == f"trial-{best[fam].number}"] for fam in best}
    assert len(test["uniform"]) == len(test["less-more-less"]) == 2
    h = summary["headline"]
    assert (h["a"], h["b"]) == (f"trial-{best['less-more-less'].number}", f"trial-{best['uniform'].number}")
    diff, low, high, p = _welch_by_hand(test["less-more-less"], test["uniform"])
    assert h["diff"] == pytest.approx(statistics.fmean(test["less-more-less"]) - statistics.fmean(test["uniform"]))
    assert (h["diff"], h["low"], h["high"], h["p"]) == pytest.approx((diff, low, high, p), rel=1e-9, abs=1e-12)
    assert summary["families"]["uniform"]["best"] == h["b"]
    # every row compares with the best searched uniform config; the DeiT-ratio baseline is one of them
    rows = {c["family"]: c for c in summary["comparisons"]}
    assert set(rows) == {"less-more-less", "baseline:uniform"} and rows["baseline:uniform"]["b"] == h["b"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "95% interval" in md and "Best rule-generated config vs best uniform config" in md
