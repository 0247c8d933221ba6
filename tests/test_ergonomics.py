"""Library traps (GlobalPruner on revit and timm models, generate() with names, automatic granularity) and the
CLI as a good citizen (-q/-v, --version, a closed pipe, --json on train, one unit per output, n = 1)."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _step(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()


# --- GlobalPruner ------------------------------------------------------------------------------------------
def test_pruner_prunes_the_revit_model_it_was_given(tiny_cfg: Any) -> None:
    """On a revit model there is no copy: the user's object is the one trained, masked and exported from."""
    from revit.models import build_model
    from revit.prune import GlobalPruner

    torch.manual_seed(0)
    model = build_model(tiny_cfg)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 5, (8,))
    pruner = GlobalPruner(model, example_inputs=x, target_macs=0.7, total_steps=4, granularity="one")
    assert pruner.model is model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(4):  # the user's loop on the user's object
        _step(model, x, y)
        pruner.accumulate()
        opt.step()
        pruner.step()
    assert pruner.done
    dense, _ = pruner.export()
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), dense.eval()(x), atol=1e-5)  # the masks live on the object given


def test_converting_a_timm_model_is_said_and_training_the_old_object_is_named(
        caplog: pytest.LogCaptureFixture) -> None:
    """A timm ViT is converted (a warning at construction); a loop that keeps training the timm object gets an
    accumulate() error that names that mistake, not "call it after backward"."""
    from timm.models.vision_transformer import VisionTransformer

    from revit.errors import ConfigError
    from revit.prune import GlobalPruner

    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=5, embed_dim=32, depth=2,
                              num_heads=2)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 5, (8,))
    with caplog.at_level(logging.WARNING, logger="revit"):
        pruner = GlobalPruner(model, example_inputs=x, target_macs=0.7, total_steps=4)
    assert pruner.model is not model
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("revit")]
    assert len(warned) == 1 and "pruner.model" in warned[0].getMessage()
    assert "VisionTransformer" in warned[0].getMessage()

    _step(model, x, y)  # the mistake: the old object is trained
    with pytest.raises(ConfigError, match="converted into a new revit model, so train pruner.model"):
        pruner.accumulate()
    model.zero_grad(set_to_none=True)  # no gradients anywhere: the plain hint
    with pytest.raises(ConfigError, match="call it after loss.backward"):
        pruner.accumulate()
    _step(pruner.model, x, y)  # the right object
    pruner.accumulate()


def test_auto_granularity_follows_the_widths_not_the_image_size() -> None:
    """A DeiT-Tiny at 64 px keeps NViT's QK steps of 8 per head (the image size used to pick steps of 4);
    the 96-wide micro model keeps micro steps."""
    from timm.models.vision_transformer import VisionTransformer

    from revit.config import Granularity
    from revit.models import build_model
    from revit.presets import get_preset
    from revit.prune import GlobalPruner

    torch.manual_seed(0)
    tiny64 = VisionTransformer(img_size=64, patch_size=16, num_classes=10, embed_dim=192, depth=2, num_heads=3)
    p = GlobalPruner(tiny64, example_inputs=torch.randn(1, 3, 64, 64), target_macs=0.7, total_steps=4)
    assert p.unit == Granularity.PRESETS["standard"].to_dict() and p.unit["qk_dim"] == 8
    micro = build_model(get_preset("revit_micro"))
    p = GlobalPruner(micro, example_inputs=torch.randn(1, 1, 28, 28), target_macs=0.7, total_steps=4)
    assert p.unit == Granularity.PRESETS["micro"].to_dict()


def test_generate_takes_names_and_budget_strings_as_the_cli_does() -> None:
    from revit import counting
    from revit.errors import ConfigError, RevitError
    from revit.rules import generate, load_rule, macs_budget

    g = generate("paper", "1.3G")
    assert g.config == generate(load_rule("paper"), macs_budget(1.3e9)).config
    assert abs(counting.macs(g.config) / 1.3e9 - 1) <= 0.01
    assert generate("uniform", "15M", "micro").config.img_size == 28
    for bad in [(3, "1G"), ("paper", None), ("paper", "lots"), ("paper", "1G", "mnist")]:
        with pytest.raises(ConfigError):
            generate(*bad)
    with pytest.raises(RevitError, match="unknown rule"):
        generate("no-such-rule", "1G")


# --- CLI ---------------------------------------------------------------------------------------------------
def _revit(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "revit", *args], capture_output=True, text=True, timeout=300, **kw)


def test_a_closed_pipe_ends_quietly() -> None:
    """``revit model info revit_small --json | head -n 1``: no traceback; and a reader gone before the first write
    gives the shell's quiet SIGPIPE status (141) with nothing on stderr."""
    r = subprocess.run(f"'{sys.executable}' -m revit model info revit_small --json | head -n 1; "
                       "echo \"status ${PIPESTATUS[0]}\"", shell=True, executable="/bin/bash", capture_output=True,
                       text=True, timeout=300)
    assert r.stdout.splitlines()[0] == "{" and r.stderr == "", r.stderr
    assert r.stdout.splitlines()[-1] in ("status 0", "status 141")
    p = subprocess.Popen([sys.executable, "-m", "revit", "model", "info", "revit_small", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # long before the interpreter has started: its first write meets a closed pipe
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 141 and err == "", err


def test_version_lists_dependencies_without_importing_torch() -> None:
    code = ("import sys; from revit.cli.main import main; rc = main(['--version']); "
            "print('torch imported' if 'torch' in sys.modules else 'torch not imported'); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert names[:5] == ["revit", "torch", "timm", "optuna", "onnxruntime"]
    assert r.stdout.splitlines()[-1] == "torch not imported"


def test_quiet_and_verbose_set_what_reaches_stderr(cli: Any) -> None:
    """stdout is the config alone at every level; -q silences the summary, -qq errors only, errors stay."""
    code, out, err = cli("generate", "--rule", "paper", "--macs", "1.3G")
    assert code == 0 and out.startswith("schema: revit/vit-config/v1") and "MACs" in err
    code, out_q, err_q = cli("-q", "generate", "--rule", "paper", "--macs", "1.3G")
    assert code == 0 and out_q == out and err_q == ""
    code, out_q2, err_q2 = cli("generate", "--rule", "paper", "--macs", "1.3G", "-q")  # after the command too
    assert code == 0 and out_q2 == out and err_q2 == ""
    code, _, err = cli("-qq", "generate", "--rule", "paper", "--macs", "1")
    assert code == 2 and err.startswith("revit: error:") and err.count("\n") == 1


def test_latency_query_by_shipped_name_in_ms_only(cli: Any) -> None:
    code, out, err = cli("latency", "query", "cpu_onnxruntime_fp32_bs64_t17", "revit_micro", "--savings")
    assert code == 0, err
    numbers_with_units = re.findall(r"(-?\d[\d.e+-]*)\s*(ms|s)\b", out)
    assert numbers_with_units and {u for _, u in numbers_with_units} == {"ms"}


def test_train_json_prints_one_object_and_writes_a_hub_folder(tmp_path: Path, cli: Any, tiny_cfg: Any) -> None:
    from revit.config import BlockDims, ViTConfig

    cfg = ViTConfig(embed_dim=16, blocks=(BlockDims(2, 4, 4, 32),), img_size=8, patch_size=2, in_chans=1,
                    num_classes=10)
    cfg.save(tmp_path / "c.yaml")
    code, out, err = cli("train", tmp_path / "c.yaml", "--data", "digits", "--val-size", "200", "--epochs", "1",
                         "--batch-size", "64", "--out", tmp_path / "run", "--json", "--no-progress")
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) == {"run", "hub", "metrics"} and 0 <= doc["metrics"]["test_acc"] <= 1
    card = (Path(doc["hub"]) / "README.md").read_text()
    assert f"{100 * doc['metrics']['test_acc']:.2f}%" in card and "Trained by `revit train`" in card


def test_prune_summary_reads_as_a_sentence() -> None:
    from revit.cli.prune import summary

    m = {"base": {"macs": 14_000_000, "params": 900_000}, "pruned": {"macs": 9_300_000, "params": 600_000},
         "macs_ratio": 0.664, "cost_ratio": 0.664, "target": {"kind": "macs"}, "penalty": "macs",
         "eta_abs": 3.5427431907570795e-12, "dense_vs_masked_max_abs_diff": 1e-7, "val_accuracy": 0.81}
    s = summary(5, m)
    assert "3.54e-12 saliency per MAC" in s and "3.5427431907570795" not in s
    assert s.count("MACs") == 1 and "val top-1 0.8100" in s


def test_one_value_reports_n_1_not_a_zero_spread() -> None:
    from revit.counting import format_spread

    assert format_spread(81.234, 0.0, 1, unit="%") == "81.23% (n = 1)"
    assert format_spread(81.234, 0.5, 3, unit="%") == "81.23 ± 0.50% (n = 3)"
