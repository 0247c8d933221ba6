"""`revit generate`: budgets met within 1%, exact rule application, errors, no torch, speed."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from revit import counting
from revit.cli.main import main
from revit.config import ViTConfig
from revit.errors import BudgetError, TableRangeError
from revit.rules import (
    GenerationBounds,
    Setting,
    apply_rule,
    family_rules,
    generate,
    load_rule,
    macs_budget,
    shipped_rules,
    uniform_rule,
)
from revit.rules.generate import latency_budget

REVIT_S = [(10, 32, 64, 1152), (4, 16, 64, 1152), (4, 16, 64, 1152)] + [(8, 32, 64, 2304)] * 6 + \
          [(4, 16, 64, 1152), (4, 16, 64, 1152), (10, 32, 64, 1152)]


def run_cli(capsys, *argv):
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_revit_s_exact_from_cli(capsys):
    rc, out, err = run_cli(capsys, "generate", "--rule", "paper", "--embed-dim", "384", "--distilled")
    assert rc == 0
    cfg = ViTConfig.from_yaml_text(out, "stdout")  # stdout is the YAML alone
    assert [(b.heads, b.qk_dim, b.v_dim, b.mlp_dim) for b in cfg.blocks] == REVIT_S
    assert cfg.distilled and cfg.tokens == 198
    assert counting.macs(cfg) == 4_705_190_400 and "MACs 4.71G" in err


def test_revit_s_budget_prefers_rule_as_written():
    g = generate(load_rule("paper"), macs_budget("4.71G"), Setting(distilled=True))
    assert g.mlp_factor == 1.0 and g.embed_dim == 384
    assert [(b.heads, b.qk_dim, b.v_dim, b.mlp_dim) for b in g.config.blocks] == REVIT_S


SWEEP_224 = [1e9 * 20 ** (i / 19) for i in range(20)]  # 1G .. 20G, log spaced
SWEEP_MICRO = [5e6 * 12 ** (i / 11) for i in range(12)]  # 5M .. 60M


@pytest.mark.parametrize("setting,rule,budgets", [
    ("imagenet", "paper", SWEEP_224),
    ("imagenet", "less-more-less", SWEEP_224),
    ("imagenet", "uniform", SWEEP_224),
    ("micro", "less-more-less", SWEEP_MICRO),
    ("micro", "uniform", SWEEP_MICRO),
])
def test_budget_sweep_within_one_percent(setting, rule, budgets):
    r = load_rule(rule)
    for b in budgets:
        g = generate(r, macs_budget(b), Setting.PRESETS[setting])
        # independent recount from the YAML text a user would get
        cfg = ViTConfig.from_yaml_text(g.config.to_yaml(derived=counting.derived(g.config)))
        assert abs(counting.macs(cfg) / b - 1) <= 0.01, (rule, b, counting.macs(cfg))
        assert cfg.depth == Setting.PRESETS[setting].depth and cfg.img_size == Setting.PRESETS[setting].img_size
        assert 0.5 <= g.mlp_factor <= 2.0


def test_micro_uses_micro_granularity():
    g = generate(load_rule("less-more-less"), macs_budget("20M"), Setting.PRESETS["micro"])
    assert g.granularity.embed_dim == 8 and g.embed_dim % 8 == 0
    assert all(b.mlp_dim % 8 == 0 and b.qk_dim % 4 == 0 for b in g.config.blocks)


def test_uniform_is_deit_style():
    g = apply_rule(uniform_rule(), 384, Setting())
    assert {(b.heads, b.qk_dim, b.v_dim, b.mlp_dim) for b in g.config.blocks} == {(6, 64, 64, 1536)}
    assert counting.macs(g.config) == counting.macs(
        ViTConfig.from_dict(__import__("revit.presets", fromlist=["x"]).get_preset(
            "revit_deit_small_patch16_224").to_dict()))
    h = generate(uniform_rule(head_dim=32), macs_budget("2G"), Setting())
    assert h.config.is_uniform() and h.config.blocks[0].qk_dim == 32


def test_budget_below_minimum_names_it(capsys):
    rc, out, err = run_cli(capsys, "generate", "--rule", "paper", "--macs", "50M")
    assert rc == 2 and out == "" and err.count("\n") == 1
    # the smallest legal config, computed independently: narrowest embed, smallest MLP factor
    smallest = apply_rule(load_rule("paper"), 16, Setting(), mlp_factor=0.5).config
    assert "below the smallest legal config" in err and counting.format_count(counting.macs(smallest)) in err


def test_budget_above_maximum_names_it():
    largest = apply_rule(uniform_rule(), 512, Setting(), mlp_factor=2.0).config
    with pytest.raises(BudgetError, match="above the largest legal config") as e:
        generate(uniform_rule(), macs_budget("30G"), Setting(), bounds=GenerationBounds(max_embed=512))
    assert counting.format_count(counting.macs(largest)) in str(e.value)


@pytest.mark.parametrize("argv,needle", [
    (["--rule", "wiggly", "--macs", "4G"], "known: " + ", ".join(sorted({*shipped_rules(), *family_rules()}))),
    (["--rule", "paper", "--latency-ms", "50"], "--latency-ms needs --table"),
    (["--rule", "paper", "--macs", "lots"], "generate: argument --macs: cannot read 'lots' as a count"),
    (["--uniform", "--macs", "4G", "--granularity", "fine"], "EMB,HEADS,QK,V,MLP"),
    (["--rule", "paper", "--head-dim", "32", "--macs", "4G"], "--head-dim applies to --uniform only"),
    (["--rule", "paper", "--macs", "4G", "--mlp-factor", "2"], "--mlp-factor applies to --embed-dim"),
    (["--rule", "paper", "--macs", "4G", "--mlp-factor-range", "1.5,2"], "must contain 1"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, needle):
    rc, out, err = run_cli(capsys, "generate", *argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("revit: error: ") and needle in err


def test_json_and_out(tmp_path, capsys):
    dest = tmp_path / "sub" / "cfg.yaml"
    rc, out, err = run_cli(capsys, "generate", "--uniform", "--macs", "4.6G", "--out", str(dest), "--json")
    assert rc == 0
    rep = json.loads(out)
    cfg = ViTConfig.load(dest)
    assert rep["macs"] == counting.macs(cfg) and rep["params"] == counting.params(cfg)
    assert abs(rep["gap"]) <= 0.01 and rep["mlp_factor"] == pytest.approx(1.0)
    assert set(rep) >= {"config", "macs", "params", "mlp_factor", "embed_dim", "budget", "notes"}
    assert "wrote" in err


def test_model_info_agrees(tmp_path, capsys):
    """`revit model info` on a generated YAML prints the MACs `revit generate` printed."""
    dest = tmp_path / "c.yaml"
    assert main(["generate", "--rule", "less-more-less", "--macs", "3G", "--out", str(dest), "--json"]) == 0
    macs = json.loads(capsys.readouterr().out)["macs"]
    assert main(["model", "info", str(dest), "--json"]) == 0
    out = capsys.readouterr().out
    assert str(macs) in out


class FakeTable:
    """A torch-free stand-in for LatencyTable: latency linear in MACs, measured up to EMB 640."""

    batch_size = 64

    def predict(self, cfg: ViTConfig) -> SimpleNamespace:
        if cfg.embed_dim > 640:
            raise TableRangeError(f"embed_dim={cfg.embed_dim} is outside the table's measured range")
        return SimpleNamespace(total_s=self.batch_size * (counting.macs(cfg) * 2e-12 + 1e-4), note="")


def test_latency_budget_with_duck_typed_table():
    t = FakeTable()
    for ms in (100.0, 400.0, 900.0):
        g = generate(load_rule("less-more-less"), latency_budget(ms / 1e3, t), Setting())
        assert abs(t.predict(g.config).total_s / (ms / 1e3) - 1) <= 0.01
    top = apply_rule(load_rule("less-more-less"), 640, Setting(), mlp_factor=2.0).config
    with pytest.raises(BudgetError, match="above the largest") as e:
        generate(load_rule("less-more-less"), latency_budget(5.0, t), Setting())
    assert "EMB 640" in str(e.value) and f"{t.predict(top).total_s * 1e3:.4g} ms/batch" in str(e.value)


def test_latency_cli_path(monkeypatch, capsys, tmp_path):
    import revit.cli.generate as gen

    monkeypatch.setattr(gen, "_load_table", lambda spec: FakeTable())
    rc, out, err = run_cli(capsys, "generate", "--rule", "paper", "--latency-ms", "300", "--table", "fake.json",
                           "--json")
    assert rc == 0
    rep = json.loads(out)
    assert rep["budget"]["kind"] == "latency" and abs(rep["gap"]) <= 0.01 and "ms/image" in err


def test_generate_does_not_import_torch():
    code = ("import sys; from revit.cli.main import main; "
            "rc = main(['generate', '--rule', 'less-more-less', '--macs', '4.6G', '--json']); "
            "assert rc == 0; bad = [m for m in ('torch', 'timm') if m in sys.modules]; "
            "print('LOADED', bad); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout[-300:] + p.stderr[-300:]
    assert "LOADED []" in p.stdout


def test_built_model_counts_the_same():
    from revit import models

    for rule, budget, setting in [("paper", "1G", "imagenet"), ("less-more-less", "2G", "imagenet"),
                                  ("uniform", "1G", "imagenet"), ("less-more-less", "20M", "micro"),
                                  ("uniform", "10M", "micro")]:
        cfg = generate(load_rule(rule), macs_budget(budget), Setting.PRESETS[setting]).config
        m = models.build_model(cfg)
        assert sum(p.numel() for p in m.parameters()) == counting.params(cfg), (rule, budget)


def test_real_latency_table_if_available(capsys):
    """With the shipped micro table (when revit.latency.table is built): budget met, range named."""
    from revit.paths import shipped_dir

    table = shipped_dir("latency_tables") / "cpu_onnxruntime_fp32_bs64_t17.json"
    from revit.latency.table import LatencyTable

    t = LatencyTable.load(table)
    rc, out, err = run_cli(capsys, "generate", "--setting", "micro", "--uniform", "--latency-ms", "20",
                           "--table", str(table), "--json")
    assert rc == 0
    rep = json.loads(out)
    cfg = ViTConfig.from_dict(rep["config"])
    assert cfg.blocks[0].qk_dim == 24  # micro granularity: uniform heads of 24 by default
    assert abs(t.predict(cfg).total_s / 0.020 - 1) <= 0.01
    rc, out, err = run_cli(capsys, "generate", "--setting", "micro", "--rule", "less-more-less",
                           "--latency-ms", "1000", "--table", str(table))
    assert rc == 2 and "measured range ends there" in err and err.count("\n") == 1


def test_uncostable_rule_names_the_width_outside_the_table(capsys):
    """The paper rule at micro widths has 10-head end blocks and V 64: the error names a non-EMB width, checked
    against the table's own refusal of the rule's config at the table's smallest EMB."""
    from revit.latency.table import LatencyTable
    from revit.paths import shipped_dir

    table = shipped_dir("latency_tables") / "cpu_onnxruntime_fp32_bs64_t17.json"
    t = LatencyTable.load(table)
    emb = int(t.axes["embed_dim"][0])
    with pytest.raises(TableRangeError) as want:
        t.predict(apply_rule(load_rule("paper"), emb, Setting.PRESETS["micro"]).config)
    assert want.value.axis not in (None, "embed_dim")
    rc, out, err = run_cli(capsys, "generate", "--setting", "micro", "--rule", "paper", "--latency-ms", "20",
                           "--table", str(table))
    assert rc == 2 and err.count("\n") == 1 and f"at EMB {emb}: {want.value.message}" in err
