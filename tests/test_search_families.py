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
    one = StudySpec.from_dict(tiny_study_doc(space=LML), "one.yaml")
    assert one.family_names == ["less-more-less"]
    assert one.spaces[0].family == "less-more-less" and one.base_rule == "less-more-less"


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
    from revit.rules import GenerationBounds, generate, macs_budget, uniform_rule
    from revit.search.objective import StudyObjective

    spec = two_family_spec()
    trial = FixedTrial({"head_dim": 16, "mlp_ratio": 3.0}, number=4)
    trial.set_user_attr("family", "uniform")
    arm = StudyObjective(spec).arm(trial)
    want = generate(uniform_rule(head_dim=16, mlp_ratio=3.0), macs_budget("200K"), spec.setting,
                    bounds=GenerationBounds())
    assert arm.family == "uniform" and arm.role == "candidate" and arm.config.blocks == want.config.blocks
    assert arm.config.embed_dim == want.config.embed_dim
    assert {(b.qk_dim, b.v_dim) for b in arm.config.blocks} == {(16, 16)}
    assert abs(counting.macs(arm.config) / 200e3 - 1) <= 0.01


# one Optuna study per family: its own sampler, seed and pruner ---------------------------------------------
def _draws(sampler, n=3):
    study = optuna.create_study()
    return [sampler.sample_independent(study, create_trial(value=0.0), "x", FloatDistribution(0, 1))
            for _ in range(n)]


def test_each_family_study_gets_its_own_sampler_seed_and_pruner(tmp_path):
    from revit.search.studies import open_studies

    spec = two_family_spec(sampler={"name": "random", "seed": 5})
    ss = open_studies(spec, f"sqlite:///{tmp_path}/s.db")
    assert [s.study_name for _, s in ss.parts()] == ["tiny/baselines", "tiny/less-more-less", "tiny/uniform"]
    assert _draws(ss.families["less-more-less"].sampler) == _draws(optuna.samplers.RandomSampler(5))
    assert _draws(ss.families["uniform"].sampler) == _draws(optuna.samplers.RandomSampler(6))
    a, b = ss.families["less-more-less"].pruner, ss.families["uniform"].pruner
    assert isinstance(a, optuna.pruners.MedianPruner) and a is not b


def test_a_resumed_family_does_not_draw_its_first_configs_again(tmp_path):
    """A run stopped and started again must not train the config it drew before a second time."""
    from revit.search.runner import run_worker
    from revit.search.studies import open_studies
    from revit.search.testing import quick_objective

    spec = two_family_spec(sampler={"name": "random", "seed": 0}, baselines=[], n_trials=1)
    url = f"sqlite:///{tmp_path}/s.db"
    run_worker(open_studies(spec, url), objective=quick_objective(spec), n_trials=1)
    run_worker(open_studies(spec, url), objective=quick_objective(spec), n_trials=2)
    for fam, study in open_studies(spec, url).families.items():
        first, second = (t.params for t in study.get_trials())
        assert first != second, fam


def test_the_pruner_of_a_family_judges_it_only_against_its_own_trials(tmp_path):
    """A slow-learning family is never pruned for being below a fast family's curves."""
    from revit.search.runner import run_worker
    from revit.search.studies import open_studies

    spec = two_family_spec(n_trials=4, baselines=[], seeds=[0], train={"epochs": 3, "batch_size": 64},
                           pruner={"name": "median", "n_startup_trials": 1})
    ss = open_studies(spec, f"journal:{tmp_path}/j.log")
    seen: dict[str, set] = {}

    def objective(trial):  # uniform rises to ~0.9, less-more-less to ~0.5, each slowly rising within its family
        fam = trial.user_attrs["family"]
        seen.setdefault(fam, set()).update(t.user_attrs.get("family")
                                           for t in ss.families[fam].get_trials(deepcopy=False))
        top = (0.9 if fam == "uniform" else 0.5) + 0.01 * trial.number
        for step in range(3):
            trial.report(top * (step + 1) / 3, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return top

    run_worker(ss, objective=objective)
    for fam, study in ss.families.items():
        assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 4, fam
        assert seen[fam] == {fam}  # its study holds its own trials only
    both = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    for t in ss.families["uniform"].get_trials():
        both.add_trial(t)
    slow = both.ask()
    for step, v in enumerate((0.5 / 3, 1.0 / 3)):
        slow.report(v, step)
    assert slow.should_prune()  # the same pruner over both families would have pruned the slow family


def test_candidates_alternate_between_families_up_to_n_trials(tmp_path):
    from revit.search.runner import candidate_counts, run_worker
    from revit.search.studies import open_studies
    from revit.search.testing import quick_objective

    spec = two_family_spec(n_trials=3, seeds=[0], baselines=[{"rule": "uniform"}])
    ss = open_studies(spec, f"journal:{tmp_path}/j.log")
    from revit.search.runner import enqueue_baselines

    enqueue_baselines(ss)
    run_worker(ss, objective=quick_objective(spec))
    order = [t.user_attrs["family"] for t in sorted(ss.trials(), key=lambda t: t.datetime_start)]
    assert order == ["baseline:uniform"] + ["less-more-less", "uniform"] * 3  # baselines first, then by turns
    assert candidate_counts(ss) == {"less-more-less": 3, "uniform": 3}
    assert run_worker(ss, objective=quick_objective(spec)).count == 0  # nothing left to run


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
    ss = run_study(spec, f"journal:{tmp_path}/j.log")
    trials = ss.trials()
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    cands = [t for t in trials if t.user_attrs["role"] == "candidate"]
    originals = [t for t in cands if "repeat_of" not in t.user_attrs]
    # the same number of sampled candidates per family, each tagged, each in its family's own study
    assert sorted(t.user_attrs["family"] for t in originals) == ["less-more-less"] * 2 + ["uniform"] * 2
    for fam, study in ss.families.items():
        assert {t.user_attrs["family"] for t in study.get_trials()} == {fam}
        assert set(study.best_trial.params) == {p.name for p in next(s for s in spec.spaces if s.name == fam).params}
    for t in [t for t in trials if t.state == TrialState.COMPLETE]:
        assert abs(t.user_attrs["macs"] / 200e3 - 1) <= 0.01
        if t.user_attrs["family"] == "uniform":  # a searched uniform config: equal blocks, QK = V per head
            blocks = {tuple(b) for b in t.user_attrs["blocks"]}
            assert len(blocks) == 1 and next(iter(blocks))[1] == next(iter(blocks))[2] == t.params["head_dim"]
    base = [t for t in trials if t.user_attrs["role"] == "baseline"]
    assert {(t.user_attrs["family"], t.user_attrs["seed"]) for t in base} == {("baseline:uniform", 0),
                                                                              ("baseline:uniform", 1)}
    # one trial per config; each family's best (its study's best_trial) trained both seeds, its value their mean
    assert originals == cands
    best = {}
    for fam in ("less-more-less", "uniform"):
        best[fam] = ss.families[fam].best_trial
        runs = best[fam].user_attrs["runs"]
        assert [r["seed"] for r in runs] == [0, 1] and best[fam].params
        assert best[fam].value == pytest.approx(statistics.fmean(r["val_acc"] for r in runs))

    summary = write_report(spec, ss, tmp_path / "rep")
    for name in ("report.md", "report.json", "accuracy_vs_macs.png", "comparison.png", "history.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    # the headline: best less-more-less minus best searched uniform, against the formulas
    test = {fam: [r["test_acc"] for r in best[fam].user_attrs["runs"]] for fam in best}
    assert len(test["uniform"]) == len(test["less-more-less"]) == 2
    h = summary["headline"]
    assert (h["a"], h["b"]) == (f"less-more-less#{best['less-more-less'].number}", f"uniform#{best['uniform'].number}")
    diff, low, high, p = _welch_by_hand(test["less-more-less"], test["uniform"])
    assert h["diff"] == pytest.approx(statistics.fmean(test["less-more-less"]) - statistics.fmean(test["uniform"]))
    assert (h["diff"], h["low"], h["high"], h["p"]) == pytest.approx((diff, low, high, p), rel=1e-9, abs=1e-12)
    assert summary["families"]["uniform"]["best"] == h["b"]
    # every row compares with the best searched uniform config; the DeiT-ratio baseline is one of them
    rows = {c["family"]: c for c in summary["comparisons"]}
    assert set(rows) == {"less-more-less", "baseline:uniform"} and rows["baseline:uniform"]["b"] == h["b"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "95% interval" in md and "Best rule-generated config vs best uniform config" in md


def test_optuna_dashboard_lists_the_family_studies_and_marks_a_candidate_best(tmp_path):
    """Through optuna-dashboard's own WSGI app: every part is a study, and a family's best trials are candidates."""
    import json
    from wsgiref.util import setup_testing_defaults

    import optuna_dashboard  # in the dev extra: a must-show of issue 16, so it fails rather than skips

    from revit.search.runner import run_study
    from revit.search.testing import quick_objective

    spec = two_family_spec(n_trials=2, seeds=[0], baselines=[{"rule": "uniform"}])
    url = f"sqlite:///{tmp_path}/s.db"
    run_study(spec, url, objective=quick_objective(spec))
    app = optuna_dashboard.wsgi(url)

    def get(path):
        env: dict = {}
        setup_testing_defaults(env)
        env.update(PATH_INFO=path, REQUEST_METHOD="GET")
        status = []
        body = b"".join(app(env, lambda s, h, e=None: status.append(s)))
        assert status == ["200 OK"], (path, status)
        return json.loads(body)

    studies = {s["study_name"]: s["study_id"] for s in get("/api/studies")["study_summaries"]}
    assert set(studies) == {"tiny/baselines", "tiny/less-more-less", "tiny/uniform"}
    for fam in ("less-more-less", "uniform"):
        best = get(f"/api/studies/{studies[f'tiny/{fam}']}")["best_trials"]
        attrs = [{a["key"]: a["value"] for a in t["user_attrs"]} for t in best]
        assert attrs and all(a["role"] == "candidate" and a["family"] == fam for a in attrs)
