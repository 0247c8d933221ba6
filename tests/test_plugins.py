"""A user's package adds a criterion, a latency backend and a rule family through entry points, and the
command line takes them without any edit to revit (tests/plugins/revit_toy_plugin, installed by
``make test``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import pytest
import torch

from revit.cli.main import main
from revit.config import Granularity, Setting
from revit.errors import ConfigError
from revit.latency.table import LatencyTable
from revit.registry import CRITERIA_GROUP

PLUGIN = Path(__file__).parent / "plugins" / "revit_toy_plugin"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _installed() -> Iterator[None]:
    """The toy plug-in's entry points are installed; its code is imported from beside this file (the checkout
    under test, whichever checkout the editable install points at), here and in the subprocesses."""
    try:
        distribution("revit-toy-plugin")
    except PackageNotFoundError:
        pytest.fail(f"the toy plugin is not installed: run `make test`, or pip install -e {PLUGIN}")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(PLUGIN))
        path = [str(PLUGIN), str(ROOT), os.environ.get("PYTHONPATH", "")]
        mp.setenv("PYTHONPATH", os.pathsep.join(path).rstrip(os.pathsep))
        yield


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env})


def test_registries_list_plugins_and_import_them_only_when_used():
    r = _python("""
        import sys
        from revit.prune.criteria import CRITERIA
        from revit.latency.backends import BACKENDS
        from revit.rules import FAMILIES
        assert "toy" in CRITERIA.names() and "toy" in BACKENDS and "toy-family" in FAMILIES
        assert not any(m.startswith("revit_toy_plugin.") for m in sys.modules), "listed names imported a plugin"
        from revit_toy_plugin.criterion import ToyCriterion
        assert CRITERIA.get("toy") is ToyCriterion and CRITERIA.name_of(ToyCriterion) == "toy"
        assert "revit_toy_plugin.backend" not in sys.modules
    """)
    assert r.returncode == 0, r.stderr


def test_help_lists_the_plugins():
    for sub, name in ((["prune"], "toy"), (["latency", "build"], "toy")):
        out = subprocess.run([sys.executable, "-m", "revit", *sub, "--help"], capture_output=True, text=True).stdout
        assert f", {name}" in " ".join(out.split()), out


def test_building_the_parser_imports_no_plugin_and_no_torch():
    r = _python("""
        import sys
        from revit.cli.main import build_parser
        build_parser().parse_args(["generate", "--rule", "toy-family-rule", "--macs", "20M"])
        assert "torch" not in sys.modules and not any(m.startswith("revit_toy_plugin") for m in sys.modules)
    """)
    assert r.returncode == 0, r.stderr


def test_prune_with_the_plugin_criterion(tmp_path):
    out = tmp_path / "p"
    assert main(["prune", "--model", "revit_micro", "--data", "digits", "--train-limit", "300", "--target-macs", "0.8",
                 "--criterion", "toy", "--batch-size", "64", "--eval-size", "0", "--test-limit", "0",
                 "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    header = json.loads((out / "trace.jsonl").read_text().splitlines()[0])
    assert header["criterion"] == "toy" and header["settings"]["criterion"] == "toy"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["macs_ratio"] <= 0.8


def test_toy_criterion_is_the_l1_norm_of_what_an_index_owns():
    """With every weight +-1, an index's L1 norm is its entry count, the square of its L2 norm (magnitude)."""
    from revit.models import build_model
    from revit.presets import resolve_config
    from revit.prune import build_criterion, derive_structure

    model = build_model(resolve_config("revit_micro"))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.where(torch.rand_like(p) < 0.5, -1.0, 1.0))
    s = derive_structure(model)
    params = dict(model.named_parameters())
    toy, mag = build_criterion("toy", s)(params, {}), build_criterion("magnitude", s)(params, {})
    for gid in toy:
        torch.testing.assert_close(toy[gid], mag[gid] ** 2)
    assert len({float(v[0]) for v in toy.values()}) > 1  # kinds own different entry counts


def test_latency_build_query_and_validate_with_the_plugin_backend(tmp_path, capsys):
    from revit_toy_plugin.backend import CALL_OVERHEAD_S, SECONDS_PER_MAC, _block_macs

    from revit.config import BlockDims

    out = tmp_path / "t.json"
    assert main(["latency", "build", "--backend", "toy", "--preset", "micro", "--batch", "8", "--no-reference",
                 "--passes", "1", "--repeats", "2", "--warmup", "1", "--out", str(out), "--no-progress"]) == 0
    t = LatencyTable.load(out)
    assert t.metadata["backend"] == "toy" and t.metadata["backend_settings"]["speed"] == 1.0
    assert t.metadata["measurement"]["clock"] == "wall"  # the base class's default clock
    knots = {a: [int(v) for v in t.axes[a]] for a in t.axes}
    cell = (knots["embed_dim"][-1], knots["heads"][-1], knots["qk_dim"][0], knots["v_dim"][-1], knots["mlp_dim"][-1])
    want = CALL_OVERHEAD_S + 8 * _block_macs(cell[0], BlockDims(*cell[1:]), 17) * SECONDS_PER_MAC
    assert float(t.lookup([cell])[0]) == pytest.approx(want, rel=1e-9)
    capsys.readouterr()
    assert main(["latency", "validate", str(out), "--samples", "2", "--noise-k", "2", "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 2


def test_a_backend_flag_the_plugin_does_not_take_is_refused(tmp_path, capsys):
    assert main(["latency", "build", "--backend", "toy", "--graph", "per-cell", "--out", str(tmp_path / "t.json")]) == 2
    assert "--graph is an option of --backend onnxruntime" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


def test_generate_with_the_plugin_rule(capsys):
    from revit_toy_plugin.family import ToyFamily

    assert main(["generate", "--rule", "toy-family-rule", "--embed-dim", "64", "--setting", "micro"]) == 0
    import yaml

    doc = yaml.safe_load(capsys.readouterr().out)
    fam = ToyFamily()
    want = fam.blocks(fam.check_params({"growth": 1.0}), 64, Setting.PRESETS["micro"].depth, Granularity.auto(28))
    assert [tuple(b.values()) for b in doc["blocks"]] == [(b.heads, b.qk_dim, b.v_dim, b.mlp_dim) for b in want]
    assert doc["blocks"][0]["mlp_dim"] < doc["blocks"][-1]["mlp_dim"]
    assert main(["rules", "list"]) == 0
    assert "toy-family-rule  family toy-family" in capsys.readouterr().out


def test_a_broken_plugin_is_one_line_naming_it(tmp_path):
    """An entry point whose module is missing: exit 2 and one line that names the entry point."""
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{CRITERIA_GROUP}]\nbroken = no_such_module_here:Thing\n")
    r = subprocess.run([sys.executable, "-m", "revit", "prune", "--model", "revit_micro", "--target-macs", "0.5",
                        "--criterion", "broken", "--out", str(tmp_path / "p")], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "no_such_module_here:Thing" in r.stderr and "failed to load" in r.stderr


# issue 27 class 20, issue 28 item 3: a broken plug-in fails alone -------------------------------------
BROKEN_PKG = "revit-broken-plugins"
BROKEN_MODULES = {
    "revit_broken_kinds.py": "NUMBER = 3\n\ndef make():\n    return 1\n\nclass Unrelated:\n    pass\n",
    "revit_broken_raises.py": "raise RuntimeError('this plug-in cannot be imported')\n",
    "revit_broken_exits.py": "import sys\nsys.exit(3)\n",
    "revit_broken_misnamed.py": "from revit.prune.criteria import Hessian\n\nclass Misnamed(Hessian):\n"
                                "    name = 'other'\n",
}
BROKEN_ENTRY_POINTS = {  # group -> {name: object}; one distribution declares them all
    "revit.rule_families": {"fam-raises": "revit_broken_raises:Family", "fam-exits": "revit_broken_exits:Family",
                            "fam-int": "revit_broken_kinds:NUMBER", "fam-function": "revit_broken_kinds:make",
                            "fam-class": "revit_broken_kinds:Unrelated", "uniform": "revit_broken_kinds:Unrelated"},
    CRITERIA_GROUP: {"crit-int": "revit_broken_kinds:NUMBER", "crit-function": "revit_broken_kinds:make",
                     "crit-class": "revit_broken_kinds:Unrelated", "crit-exits": "revit_broken_exits:Thing",
                     "hessian": "revit_broken_kinds:Unrelated", "crit-misnamed": "revit_broken_misnamed:Misnamed"},
    "revit.backends": {"be-int": "revit_broken_kinds:NUMBER", "be-function": "revit_broken_kinds:make",
                       "be-class": "revit_broken_kinds:Unrelated", "be-raises": "revit_broken_raises:Backend"},
    "revit.samplers": {"samp-raises": "revit_broken_raises:Sampler", "samp-int": "revit_broken_kinds:NUMBER",
                       "tpe": "revit_broken_kinds:Unrelated"},
    "revit.optuna_pruners": {"opr-class": "revit_broken_kinds:Unrelated"},
}
# each command runs in one process that sees every broken entry point above: those that do not name one work
BROKEN_RUNS = [
    ["generate", "--uniform", "--macs", "4.6G"],
    ["generate", "--rule", "uniform", "--macs", "4.6G"],
    ["generate", "--rule", "paper", "--macs", "4.6G"],
    ["rules", "list"],
    ["rules", "list", "--json"],
    *(["generate", "--rule", n, "--macs", "4.6G"] for n in ("fam-raises", "fam-exits", "fam-int", "fam-function",
                                                             "fam-class")),
    ["generate", "--rule", "no-such-rule", "--macs", "4.6G"],
    *(["prune", "--model", "revit_micro", "--target-macs", "0.5", "--criterion", n, "--out", f"p-{n}"]
      for n in ("crit-int", "crit-function", "crit-class", "crit-exits", "crit-misnamed")),
    *(["latency", "build", "--backend", n, "--out", f"t-{n}.json"] for n in ("be-int", "be-function", "be-class",
                                                                           "be-raises")),
    ["plugins", "--json"],
    *(["search", "run", f"../{n}.yaml", "--storage", f"{n}.db"] for n in ("samp-raises", "samp-int", "opr-class")),
]
BROKEN_SCRIPT = """
import contextlib, io, json, sys
from revit.cli.main import main
out = []
for argv in json.loads(sys.argv[1]):
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        rc = main(argv)
    out.append({"argv": argv, "rc": rc, "out": o.getvalue(), "err": e.getvalue()})
from revit.prune.criteria import CRITERIA, Hessian
assert CRITERIA.get("hessian") is Hessian, "a plug-in took a built-in's name"
out.append({"criteria_broken": CRITERIA.broken()})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def broken_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every run of :data:`BROKEN_RUNS`, in one process whose path holds a package of broken entry points."""
    root = tmp_path_factory.mktemp("broken_plugins")
    dist = root / "revit_broken_plugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {BROKEN_PKG}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{n} = {v}\n" for n, v in eps.items()) for group, eps in BROKEN_ENTRY_POINTS.items()))
    for name, text in BROKEN_MODULES.items():
        (root / name).write_text(text)
    from revit.search.testing import tiny_study_doc

    for name, doc in (("samp-raises", tiny_study_doc(sampler={"name": "samp-raises"})),
                      ("samp-int", tiny_study_doc(sampler={"name": "samp-int"})),
                      ("opr-class", tiny_study_doc(pruner={"name": "opr-class"}))):
        (root / f"{name}.yaml").write_text(json.dumps(doc))  # JSON is YAML
    work = root / "work"
    work.mkdir()
    r = subprocess.run([sys.executable, "-c", BROKEN_SCRIPT, json.dumps(BROKEN_RUNS)], capture_output=True, text=True,
                       cwd=work, env={**os.environ, "OMP_NUM_THREADS": "1",
                                      "PYTHONPATH": os.pathsep.join([str(root), str(ROOT), *sys.path])})
    assert r.returncode == 0, r.stderr[-3000:]
    runs = json.loads(r.stdout.splitlines()[-1])
    return {"runs": {" ".join(x["argv"]): x for x in runs[:-1]}, "criteria_broken": runs[-1]["criteria_broken"],
            "work": work}


def test_a_broken_rule_family_breaks_only_the_commands_that_name_it(broken_runs: dict[str, Any]) -> None:
    """`generate --uniform` works beside six broken rule-family plug-ins; `generate --rule BROKEN` is one line
    naming the package; a plug-in that takes a built-in's name (uniform) leaves the built-in in place."""
    import yaml

    runs = broken_runs["runs"]
    uniform = runs["generate --uniform --macs 4.6G"]
    assert uniform["rc"] == 0 and uniform["err"].count("revit: error") == 0, uniform["err"]
    assert yaml.safe_load(uniform["out"])["embed_dim"] > 0
    assert runs["generate --rule uniform --macs 4.6G"]["out"] == uniform["out"]
    assert runs["generate --rule paper --macs 4.6G"]["rc"] == 0
    for name, why in (("fam-raises", "RuntimeError: this plug-in cannot be imported"), ("fam-exits", "SystemExit: 3"),
                      ("fam-int", "is an int (3)"), ("fam-function", "is a function (make)"),
                      ("fam-class", "is the class revit_broken_kinds.Unrelated")):
        r = runs[f"generate --rule {name} --macs 4.6G"]
        assert r["rc"] == 2 and r["err"].count("\n") == 1 and r["err"].startswith("revit: error: "), r["err"]
        assert f"package {BROKEN_PKG}" in r["err"] and why in r["err"] and r["out"] == "", r["err"]
    unknown = runs["generate --rule no-such-rule --macs 4.6G"]
    assert unknown["rc"] == 2 and "unknown rule 'no-such-rule'" in unknown["err"] and "fam-raises" in unknown["err"]


def test_the_list_command_shows_broken_plugins_with_their_line(broken_runs: dict[str, Any]) -> None:
    runs = broken_runs["runs"]
    text, js = runs["rules list"], runs["rules list --json"]
    assert text["rc"] == 0 and js["rc"] == 0, text["err"] + js["err"]
    broken = {b["family"]: b["error"] for b in json.loads(js["out"])["broken"]}
    assert set(broken) == {"fam-raises", "fam-exits", "fam-int", "fam-function", "fam-class",
                           f"uniform ({BROKEN_PKG})"}
    assert "the name 'uniform' is taken by a built-in rule family" in broken[f"uniform ({BROKEN_PKG})"]
    for name, line in broken.items():
        assert f"package {BROKEN_PKG}" in line and f"{name:16s} broken    {line}" in text["out"]
    assert {f["family"] for f in json.loads(js["out"])["families"]} >= {"paper", "uniform", "less-more-less"}


def test_criteria_and_backends_of_the_wrong_kind_are_one_line_naming_the_package(broken_runs: dict[str, Any]) -> None:
    runs = broken_runs["runs"]
    for argv, name in [(r, r[r.index("--criterion") + 1]) for r in BROKEN_RUNS if "--criterion" in r] + \
                      [(r, r[r.index("--backend") + 1]) for r in BROKEN_RUNS if "--backend" in r]:
        r = runs[" ".join(argv)]
        assert r["rc"] == 2 and r["err"].count("\n") == 1 and "Traceback" not in r["err"], r["err"]
        assert f"{name!r} (entry point" in r["err"] and f"package {BROKEN_PKG}" in r["err"], r["err"]
    assert sorted(p.name for p in broken_runs["work"].iterdir()) == []  # nothing written
    assert "taken by a built-in importance criterion" in broken_runs["criteria_broken"][f"hessian ({BROKEN_PKG})"]


# issue 28 item 2: plug-ins that carry their own knowledge ---------------------------------------------
REGISTRIES = {"criteria": ("revit.prune.criteria", "CRITERIA"), "backends": ("revit.latency.backends", "BACKENDS"),
              "rule-families": ("revit.rules.base", "FAMILIES"), "samplers": ("revit.search.samplers", "SAMPLERS"),
              "optuna-pruners": ("revit.search.samplers", "OPTUNA_PRUNERS"),
              "storages": ("revit.search.storage", "STORAGES"), "cost-models": ("revit.cost", "COSTS")}


def _registry(family: str) -> Any:
    import importlib

    module, attr = REGISTRIES[family]
    return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize("family", list(REGISTRIES))
def test_every_plugin_has_its_name_once_and_a_description(family: str) -> None:
    """Each member is registered under the name its class carries (or an alias it declares), and has a one-line
    description; `revit plugins FAMILY --json` shows the same members and descriptions."""
    reg = _registry(family)
    members = reg.loaded()
    assert members
    for name, cls in members.items():
        assert getattr(cls, reg.key) == name or name in getattr(cls, "aliases", ()), (name, cls)
        assert reg.describe(name).strip() and "\n" not in reg.describe(name), name
    r = subprocess.run([sys.executable, "-m", "revit", "plugins", family, "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)[family]
    assert {m["name"] for m in listed["members"]} | {a for m in listed["members"] for a in m["aliases"]} == set(members)
    assert all(m["description"] == reg.describe(m["name"]) for m in listed["members"])


def test_the_registry_takes_the_name_from_the_class() -> None:
    from revit.registry import Registry

    class Base:
        name = ""

    reg: Registry[type[Base]] = Registry("thing", base=Base)

    @reg.register
    class One(Base):
        """The first thing."""

        name, aliases = "one", ("uno",)

    assert reg.get("one") is One and reg.get("uno") is One and reg.name_of(One) == "one"
    assert reg.describe("one") == "The first thing." and [r["aliases"] for r in reg.catalogue()] == [["uno"]]
    with pytest.raises(TypeError, match="has no 'name'"):
        reg.register(Base)


def test_help_shows_each_plugin_with_its_description_and_options() -> None:
    prune = subprocess.run([sys.executable, "-m", "revit", "prune", "--help"], capture_output=True, text=True).stdout
    assert "importance criterion (--criterion):" in prune and "--criterion-option KEY=VALUE" in prune
    assert "toy plugin: sum of |w|**power over the weights an index owns" in prune
    assert "option power=1.0  exponent of |w| summed over the owned weights" in prune
    assert "option norm_mlp_dim=1.0" in prune  # a built-in's options too
    build = subprocess.run([sys.executable, "-m", "revit", "latency", "build", "--help"], capture_output=True,
                           text=True).stdout
    flat = " ".join(build.split())
    assert "--speed FLOAT how many times faster than 1 ps per MAC the toy device runs (--backend toy; default 1.0)" \
        in flat, build
    assert "--graph shared|per-cell" in build and "(--backend onnxruntime; default shared)" in flat
    assert "analytic toy device: 1 ps per MAC + 1 us per call" in build
    r = _python("""
        import contextlib, io, sys
        from revit.cli.main import main
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert main(["--help"]) == 0
        assert "latency" in out.getvalue()
        assert "torch" not in sys.modules and not any(m.startswith("revit_toy_plugin") for m in sys.modules)
    """)
    assert r.returncode == 0, r.stderr


def test_a_backend_option_reaches_the_backend_from_its_own_flag(tmp_path: Path, capsys: Any) -> None:
    """`--speed 4` (declared by the toy backend) divides every cell's time by 4, and is recorded in the table."""
    from revit_toy_plugin.backend import CALL_OVERHEAD_S, SECONDS_PER_MAC, _block_macs

    from revit.config import BlockDims

    out = tmp_path / "t.json"
    assert main(["latency", "build", "--backend", "toy", "--speed", "4", "--preset", "micro", "--batch", "8",
                 "--no-reference", "--passes", "1", "--repeats", "1", "--warmup", "0", "--out", str(out),
                 "--no-progress"]) == 0
    t = LatencyTable.load(out)
    assert t.metadata["backend_settings"]["speed"] == 4.0
    cell = tuple(int(t.axes[a][0]) for a in t.axes)
    want = (CALL_OVERHEAD_S + 8 * _block_macs(cell[0], BlockDims(*cell[1:]), 17) * SECONDS_PER_MAC) / 4
    assert float(t.lookup([cell])[0]) == pytest.approx(want, rel=1e-9)
    capsys.readouterr()
    for argv, msg in ((["--backend", "toy", "--speed", "fast"], "backend 'toy': speed must be a number, got 'fast'"),
                      (["--backend", "toy", "--speed", "0"], "speed must be > 0"),
                      (["--backend", "onnxruntime", "--speed", "2"], "--speed is an option of --backend toy")):
        assert main(["latency", "build", *argv, "--out", str(tmp_path / "x.json")]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]
    assert main(["latency", "backends", "--json"]) == 0
    rows = {m["name"]: m for m in json.loads(capsys.readouterr().out)["members"]}
    assert rows["toy"]["options"] == [{"name": "speed", "default": 1.0, "choices": None,
                                       "help": "how many times faster than 1 ps per MAC the toy device runs"}]
    assert rows["torch"]["description"].startswith("torch eager")
    from revit.latency.backends import get_backend  # the library checks the same declaration

    assert get_backend("toy", speed="3").speed == 3.0 and get_backend("toy").speed == 1.0
    with pytest.raises(ConfigError, match="backend 'toy' has no option 'sped'; its options: speed"):
        get_backend("toy", sped=2)


def _random_weights_model() -> Any:
    from revit.models import build_model
    from revit.presets import resolve_config

    torch.manual_seed(0)
    model = build_model(resolve_config("revit_micro"))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model


def test_criterion_options_reach_the_criterion_from_the_library() -> None:
    """The toy criterion's `power` (sum |w|^2 is magnitude squared) and nvit-code's normalisers (a normaliser
    of 2 divides a one-unit index's score by 4), through GlobalPruner's and build_criterion's options."""
    from revit.prune import GlobalPruner, build_criterion, derive_structure

    model = _random_weights_model()
    s = derive_structure(model)
    params = dict(model.named_parameters())
    toy2 = build_criterion("toy", s, options={"power": 2.0})(params, {})
    mag = build_criterion("magnitude", s)(params, {})
    for gid in toy2:
        torch.testing.assert_close(toy2[gid], mag[gid] ** 2)
    grads = {k: torch.randn_like(p) for k, p in params.items()}
    default = build_criterion("nvit-code", s)(params, grads)
    pruner = GlobalPruner(model, target_macs=0.5, total_steps=4, criterion="nvit-code",
                          criterion_options={"norm_mlp_dim": 2.0})
    scaled = pruner.criterion(params, grads)
    for g in s.groups:
        torch.testing.assert_close(scaled[g.gid], default[g.gid] / (4 if g.kind == "mlp_dim" else 1))
    with pytest.raises(ConfigError, match="'nvit-code' has no option 'norm_mlp'; its options: norm_embed_dim"):
        build_criterion("nvit-code", s, options={"norm_mlp": 2.0})


def test_prune_config_checks_and_parses_criterion_options() -> None:
    from revit.prune import PruneConfig

    assert PruneConfig(criterion="toy", criterion_options={"power": "2"}).criterion_options == {"power": 2.0}
    assert "criterion_options" not in PruneConfig().settings()  # traces of runs without options are unchanged
    assert PruneConfig(criterion="toy", criterion_options={"power": 2}).settings()["criterion_options"] == {"power": 2}
    for crit, opts, msg in (("hessian", {"x": 1}, "criterion 'hessian' has no option 'x'; its options: none"),
                            ("toy", {"power": "big"}, "criterion 'toy': power must be a number, got 'big'"),
                            ("toy", {"power": float("nan")}, "power must be a finite number")):
        with pytest.raises(ConfigError, match=re.escape(msg)):
            PruneConfig(criterion=crit, criterion_options=opts)


@pytest.mark.parametrize(("argv", "msg"), [
    (["--criterion", "toy", "--criterion-option", "powr=2"], "'toy' has no option 'powr'; its options: power"),
    (["--criterion", "toy", "--criterion-option", "power=x"], "criterion 'toy': power must be a number, got 'x'"),
    (["--criterion", "toy", "--criterion-option", "power"], "--criterion-option takes KEY=VALUE, got 'power'"),
    (["--criterion-option", "norm_heads=1", "--criterion-option", "norm_heads=2"], "norm_heads is given twice"),
])
def test_a_bad_criterion_option_is_one_line_and_writes_nothing(tmp_path: Path, capsys: Any, argv: list[str],
                                                               msg: str) -> None:
    out = tmp_path / "p"
    assert main(["prune", "--model", "revit_micro", "--data", "digits", "--target-macs", "0.8", *argv,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and err.startswith("revit: error: "), err
    assert not out.exists()


def test_broken_samplers_and_optuna_pruners_fail_alone(broken_runs: dict[str, Any]) -> None:
    """The sampler and Optuna-pruner groups fail alone like the others: a spec naming a broken one is one line
    naming the package, `revit plugins` lists them as broken, a plug-in taking `tpe` leaves Optuna's TPE; a
    class that calls itself otherwise than its entry point is broken too (a name is written once)."""
    runs = broken_runs["runs"]
    for name, why in (("samp-raises", "RuntimeError: this plug-in cannot be imported"), ("samp-int", "is an int (3)"),
                      ("opr-class", "is the class revit_broken_kinds.Unrelated")):
        r = runs[f"search run ../{name}.yaml --storage {name}.db"]
        assert r["rc"] == 2 and r["err"].count("\n") == 1 and why in r["err"], r["err"]
        assert f"{name!r} (entry point" in r["err"] and f"package {BROKEN_PKG}" in r["err"], r["err"]
    listed = runs["plugins --json"]
    assert listed["rc"] == 0, listed["err"]
    doc = json.loads(listed["out"])
    assert {b["name"] for b in doc["samplers"]["broken"]} == {"samp-raises", "samp-int", f"tpe ({BROKEN_PKG})"}
    assert {b["name"] for b in doc["optuna-pruners"]["broken"]} == {"opr-class"}
    assert "tpe" in {m["name"] for m in doc["samplers"]["members"]}
    assert doc["samplers"]["entry_point_group"] == "revit.samplers"
    assert doc["optuna-pruners"]["entry_point_group"] == "revit.optuna_pruners"
    misnamed = runs[" ".join(next(r for r in BROKEN_RUNS if "crit-misnamed" in r))]["err"]
    assert "calls itself 'other': write the name once, in the entry point" in misnamed, misnamed


# the plug-in guide's example package (docs/guides/plugins.md), installed and run through the command line --------
EXAMPLE = ROOT / "examples" / "revit_example_plugin"


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """examples/revit_example_plugin installed without pip: a dist-info whose entry points are those of its
    pyproject.toml, beside the package on PYTHONPATH (what an install puts in site-packages); returns the env."""
    import tomllib

    site = tmp_path_factory.mktemp("example_site")
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    dist = site / f"revit_example_plugin-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (dist / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{n} = {v}\n" for n, v in eps.items())
        for group, eps in project["entry-points"].items()))
    assert set(project["entry-points"]) == {"revit.criteria", "revit.backends", "revit.rule_families",
                                            "revit.samplers"}
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(site), str(EXAMPLE), str(ROOT), *sys.path])}


def _run_all(argvs: list[list[str]], cwd: Path, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each command line through revit's main, in one process that sees the example package."""
    r = subprocess.run([sys.executable, "-c", BROKEN_SCRIPT, json.dumps(argvs)], capture_output=True, text=True,
                       cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return {" ".join(x["argv"]): x for x in json.loads(r.stdout.splitlines()[-1])[:-1]}


def test_the_guide_example_package_runs_through_the_cli(example_site: dict[str, str], tmp_path: Path) -> None:
    """Its criterion (with an option), its backend (with its own flag) and its rule family, each by the command
    that uses it; `revit plugins` lists all four members with their descriptions and options."""
    from revit import counting
    from revit.config import BlockDims

    build = ["latency", "build", "--backend", "macs-clock", "--ns-per-mac", "0.002", "--preset", "micro", "--batch",
             "8", "--no-reference", "--passes", "1", "--repeats", "1", "--warmup", "0", "--out", "t.json",
             "--no-progress"]
    prune = ["prune", "--model", "revit_micro", "--data", "digits", "--train-limit", "200", "--target-macs", "0.9",
             "--criterion", "fisher", "--criterion-option", "power=0.5", "--batch-size", "64", "--eval-size", "0",
             "--test-limit", "0", "--threads", "1", "--no-progress", "--out", "p"]
    generate = ["generate", "--rule", "taper-20", "--embed-dim", "64", "--setting", "micro"]
    runs = _run_all([["plugins", "--json"], build, prune, generate], tmp_path, example_site)
    assert all(r["rc"] == 0 for r in runs.values()), {k: r["err"][-500:] for k, r in runs.items() if r["rc"]}
    listed = json.loads(runs["plugins --json"]["out"])
    for family, name, option in (("criteria", "fisher", "power"), ("backends", "macs-clock", "ns_per_mac"),
                                 ("rule-families", "taper", None), ("samplers", "tpe-warm", None)):
        row = next(m for m in listed[family]["members"] if m["name"] == name)
        assert row["description"] and [o["name"] for o in row["options"]] == ([option] if option else []), row
    t = LatencyTable.load(tmp_path / "t.json")
    cell = tuple(int(t.axes[a][-1]) for a in t.axes)
    per_mac = float(t.lookup([cell])[0]) / (8 * counting.block_macs(cell[0], BlockDims(*cell[1:]), 17))
    assert per_mac == pytest.approx(0.002e-9, rel=1e-9) and t.metadata["backend_settings"]["ns_per_mac"] == 0.002
    header = json.loads((tmp_path / "p" / "trace.jsonl").read_text().splitlines()[0])
    assert header["criterion"] == "fisher" and header["settings"]["criterion_options"] == {"power": 0.5}
    assert json.loads((tmp_path / "p" / "metrics.json").read_text())["macs_ratio"] <= 0.9
    import yaml

    sys.path.insert(0, str(EXAMPLE))
    try:
        from revit_example_plugin.family import Taper
    finally:
        sys.path.remove(str(EXAMPLE))
    want = Taper().blocks({"taper": 0.2, "mlp_ratio": 4.0}, 64, Setting.PRESETS["micro"].depth, Granularity.auto(28))
    doc = yaml.safe_load(runs[" ".join(generate)]["out"])
    assert [tuple(b.values()) for b in doc["blocks"]] == [(b.heads, b.qk_dim, b.v_dim, b.mlp_dim) for b in want]
    assert doc["blocks"][0]["mlp_dim"] > doc["blocks"][-1]["mlp_dim"]


def test_the_guide_example_sampler_runs_a_study(example_site: dict[str, str], tmp_path: Path) -> None:
    """`revit search run` with `sampler: {name: tpe-warm, warmup: 1}`: an argument only the plug-in's factory
    takes, so the study ran on the plug-in."""
    import optuna

    from revit.search.testing import tiny_study_doc

    doc = tiny_study_doc(sampler={"name": "tpe-warm", "seed": 0, "warmup": 1}, pruner={"name": "none"}, n_trials=2,
                         seeds=[0], repeats={"top_k": 0}, baselines=[])
    (tmp_path / "s.yaml").write_text(json.dumps(doc))
    runs = _run_all([["search", "run", "s.yaml", "--storage", "s.db", "-q"]], tmp_path, example_site)
    r = runs["search run s.yaml --storage s.db -q"]
    assert r["rc"] == 0, r["err"][-2000:]
    study = optuna.load_study(study_name="tiny/less-more-less", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 2


def test_a_prune_resumes_only_with_the_criterion_options_it_began_with(tmp_path: Path, digits: Any) -> None:
    """Options given to a killed run are part of its settings: resuming without them (or with others) is refused,
    with the same ones it goes on; a run begun without options is refused when resumed with some."""
    from revit.config import BlockDims, ViTConfig
    from revit.cost import CostTarget
    from revit.errors import CheckpointError
    from revit.models import build_model
    from revit.prune import PruneConfig, PruneRun

    class Kill(Exception):
        pass

    class Killed(PruneRun):
        def _save_state(self) -> None:
            super()._save_state()
            if self.pruner.steps == 1:
                raise Kill

    def model() -> Any:
        torch.manual_seed(0)
        return build_model(ViTConfig(embed_dim=16, blocks=(BlockDims(2, 4, 4, 32),) * 2, img_size=8, patch_size=4,
                                     in_chans=1, num_classes=10))

    def cfg(**opts: float) -> PruneConfig:
        return PruneConfig(target=CostTarget.macs(0.6), interval=2, per_step=2, batch_size=32, granularity="one",
                           eval_size=0, criterion="nvit-code", criterion_options=opts)

    for began, resumed in (({"norm_mlp_dim": 2.0}, {}), ({"norm_mlp_dim": 2.0}, {"norm_mlp_dim": 3.0}),
                           ({}, {"norm_heads": 2.0})):
        out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        with pytest.raises(Kill):
            Killed(model(), digits.train, None, cfg(**began), out, progress=False).run()
        with pytest.raises(CheckpointError, match=r"other settings \(criterion_options\)"):
            PruneRun(model(), digits.train, None, cfg(**resumed), out, resume=True, progress=False)
        PruneRun(model(), digits.train, None, cfg(**began), out, resume=True, progress=False)
