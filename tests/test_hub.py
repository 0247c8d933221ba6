"""timm's hub format: a pruned timm ViT saved with a model card, rebuilt by ``timm.create_model('local-dir:...')``
from another working directory with equal outputs; the neutral ``revit`` architecture; ``revit model save``."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# rebuilds the folder in a fresh interpreter and writes its logits on the saved input
RELOAD = """
import sys, timm, torch
import revit.models  # registers revit's architectures in timm
torch.set_num_threads(1)
model = timm.create_model(sys.argv[1], pretrained=True).eval()
x = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save({"logits": model(x), "architecture": model.pretrained_cfg["architecture"]}, sys.argv[3])
"""


def _reload_elsewhere(name: str, x: torch.Tensor, tmp: Path, cwd: Path) -> dict[str, Any]:
    """``timm.create_model(name, pretrained=True)`` in a subprocess running in ``cwd``; its logits on ``x``."""
    cwd.mkdir(parents=True, exist_ok=True)
    torch.save(x, tmp / "x.pt")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", RELOAD, name, str(tmp / "x.pt"), str(tmp / "y.pt")], cwd=cwd,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return torch.load(tmp / "y.pt")


def _flop_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """MACs of one image by torch's FlopCounterMode (math attention), independently of revit's counting."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model.eval()(x[:1])
    return int(fc.get_total_flops() // 2)


def _module_widths(model: Any) -> list[tuple[int, int, int, int]]:
    """(heads, qk per head, v per head, mlp) of every block, read from the weight shapes."""
    out = []
    for b in model.blocks:
        heads = b.attn.num_heads
        v = b.attn.proj.in_features // heads
        qk = (b.attn.qkv.out_features - heads * v) // (2 * heads)
        out.append((heads, qk, v, b.mlp.fc1.out_features))
    return out


def _strings(doc: Any) -> list[str]:
    if isinstance(doc, dict):
        return [s for v in doc.values() for s in _strings(v)]
    if isinstance(doc, list):
        return [s for v in doc for s in _strings(v)]
    return [doc] if isinstance(doc, str) else []


def test_pruned_timm_vit_round_trips_through_local_dir(tmp_path: Path) -> None:
    """Prune a timm ViT, save_pretrained with a card, rebuild from another directory: equal outputs, card names
    the MACs (FlopCounterMode's count) and the widths (the weight shapes); config.json holds no path."""
    from timm.models.vision_transformer import VisionTransformer

    from revit.models import ModelCard, save_pretrained
    from revit.prune import GlobalPruner

    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=5, embed_dim=64, depth=2,
                              num_heads=4)
    x, y = torch.randn(16, 1, 16, 16), torch.randint(0, 5, (16,))
    pruner = GlobalPruner(model, example_inputs=x, target_macs=0.6, total_steps=6)
    net = pruner.model
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    for _ in range(6):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        pruner.accumulate(loss)
        opt.step()
        pruner.step()
    dense, trace = pruner.export()
    widths = _module_widths(dense)
    assert widths != _module_widths(model)  # it was pruned
    out = save_pretrained(dense, tmp_path / "hub", card=ModelCard(base="timm VisionTransformer (test)",
                                                                  base_config=trace.base_config))
    assert sorted(p.name for p in out.iterdir()) == [".revit-run.json", "README.md", "config.json",
                                                     "model.safetensors"]  # the marker lists the other three

    got = _reload_elsewhere(f"local-dir:{out.resolve()}", x, tmp_path, tmp_path / "elsewhere")
    with torch.no_grad():
        want = dense.eval()(x)
    assert torch.allclose(got["logits"], want, rtol=0, atol=1e-6), float((got["logits"] - want).abs().max())
    assert got["architecture"] == "revit"

    doc = json.loads((out / "config.json").read_text())
    assert doc["architecture"] == "revit"
    assert [(b["heads"], b["qk_dim"], b["v_dim"], b["mlp_dim"]) for b in doc["model_args"]["config"]["blocks"]] \
        == widths
    assert not any(str(tmp_path) in s or s.endswith((".yaml", ".safetensors")) for s in _strings(doc))

    card = (out / "README.md").read_text()
    macs = _flop_macs(dense, x)
    assert f"{macs:,}" in card
    for i, (h, q, v, m) in enumerate(widths):
        assert f"| {i} | {h} | {q} | {v} | {m} |" in card
    assert "timm VisionTransformer (test)" in card and "library_name: timm" in card


def test_timm_save_for_hf_works_as_for_timm_models(tmp_path: Path, tiny_cfg: Any) -> None:
    """``timm.create_model('revit', config=ViTConfig)`` and a preset with a relative YAML path both go through
    timm's own ``save_for_hf`` and come back from another directory with equal outputs."""
    import timm
    from timm.models import save_for_hf

    import revit.models  # noqa: F401

    torch.manual_seed(0)
    a = timm.create_model("revit", config=tiny_cfg).eval()
    save_for_hf(a, str(tmp_path / "a"), safe_serialization=True)
    (tmp_path / "cfgdir").mkdir()
    tiny_cfg.save(tmp_path / "cfgdir" / "pruned.yaml")
    old = Path.cwd()
    try:
        os.chdir(tmp_path / "cfgdir")
        b = timm.create_model("revit_micro", config="pruned.yaml").eval()  # a relative path
    finally:
        os.chdir(old)
    save_for_hf(b, str(tmp_path / "b"), safe_serialization=True)
    x = torch.randn(3, 1, 16, 16)
    for name, m in (("a", a), ("b", b)):
        assert "pruned.yaml" not in (tmp_path / name / "config.json").read_text()
        got = _reload_elsewhere(f"local-dir:{tmp_path / name}", x, tmp_path, tmp_path / "other")
        with torch.no_grad():
            assert torch.allclose(got["logits"], m(x), rtol=0, atol=1e-6)
        assert got["architecture"] == "revit"


def test_pretrained_cfg_names_what_the_model_is() -> None:
    """A generated 224-px distilled config built through 'revit_micro' is not called revit_micro; a preset's
    config built through 'revit' is called by the preset's name; 'revit' without a config is one clear error."""
    import timm

    import revit.models  # noqa: F401
    from revit.config import Setting
    from revit.errors import ConfigError
    from revit.presets import PRESETS
    from revit.rules import generate

    gen = generate("paper", "1.3G", Setting(distilled=True)).config
    m = timm.create_model("revit_micro", config=gen)
    cfg = m.pretrained_cfg
    assert cfg["architecture"] == "revit" and cfg["input_size"] == (3, 224, 224)
    assert "224 px" in cfg["description"] and "distilled" in cfg["description"]
    assert m.num_classes == 1000 and m.head_dist is not None
    assert timm.create_model("revit", config=PRESETS["revit_micro"]()).pretrained_cfg["architecture"] == "revit_micro"
    assert timm.create_model("revit", config=gen.to_dict()).config == gen  # a dict, as config.json holds
    with pytest.raises(ConfigError, match="needs config="):
        timm.create_model("revit")


def test_card_predicts_latency_with_its_table(tmp_path: Path) -> None:
    """With a table, the card gives the table's prediction (total and per block, in ms) and names the table."""
    from revit.latency.table import LatencyTable
    from revit.models import build_model, save_pretrained
    from revit.presets import get_preset

    table = LatencyTable.load("cpu_onnxruntime_fp32_bs64_t17")  # a shipped table, by name
    cfg = get_preset("revit_micro")
    out = save_pretrained(build_model(cfg), tmp_path / "m", table=table)
    card = (out / "README.md").read_text()
    pred = table.predict(cfg)
    assert f"{pred.total_s * 1e3:.3f} ms per batch of 64" in card
    assert "| 0 | 4 | 24 | 24 | 384 |" in card and f"{pred.per_block_s[0] * 1e3:.3f} ms |" in card
    assert "cpu_onnxruntime_fp32_bs64_t17.json" in card


def test_save_refuses_other_folders_and_replaces_only_with_overwrite(tmp_path: Path, tiny_cfg: Any) -> None:
    from revit.errors import RunExistsError
    from revit.models import build_model, save_pretrained

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RunExistsError, match="without revit's run marker"):
        save_pretrained(build_model(tiny_cfg), other, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"
    out = save_pretrained(build_model(tiny_cfg), tmp_path / "m")
    with pytest.raises(RunExistsError, match="overwrite"):
        save_pretrained(build_model(tiny_cfg), out)
    save_pretrained(build_model(tiny_cfg), out, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_cli_prune_json_and_model_save(tmp_path: Path, cli: Any) -> None:
    """``revit prune --json`` prints one JSON object; the run holds hf/, which rebuilds the pruned model;
    ``revit model save RUN`` writes the same weights elsewhere."""
    from safetensors.torch import load_file

    from revit.config import BlockDims, ViTConfig

    cfg = ViTConfig(embed_dim=16, blocks=(BlockDims(2, 4, 4, 32),) * 2, img_size=8, patch_size=2, in_chans=1,
                    num_classes=10)
    cfg.save(tmp_path / "tiny.yaml")
    code, out, err = cli("prune", "--model", tmp_path / "tiny.yaml", "--data", "digits", "--val-size", "200",
                         "--test-limit", "0", "--target-macs", "0.6", "--batch-size", "64", "--lr", "1e-3",
                         "--eval-size", "100", "--out", tmp_path / "run", "--json")
    assert code == 0, err
    doc = json.loads(out)  # one JSON object and nothing else on stdout
    assert "pruned in" in err and "MACs MACs" not in err and re.search(r"step \d+/\d+: [\d.]+K MACs, target", err)
    assert doc["hub"] == str(tmp_path / "run" / "hf") and doc["metrics"]["macs_ratio"] <= 0.6
    hub = Path(doc["hub"])
    pruned = load_file(tmp_path / "run" / "pruned.safetensors")
    saved = load_file(hub / "model.safetensors")
    assert pruned.keys() == saved.keys() and all(torch.equal(pruned[k], saved[k]) for k in pruned)
    assert "trace.png" in (hub / "README.md").read_text() and (hub / "trace.png").is_file()
    assert "val top-1" in (hub / "README.md").read_text()
    code, out, err = cli("model", "save", tmp_path / "run", "--out", tmp_path / "again")
    assert code == 0 and out == "", err
    again = load_file(tmp_path / "again" / "model.safetensors")
    assert all(torch.equal(pruned[k], again[k]) for k in pruned)
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == json.loads((hub / "config.json").read_text())


def test_guide_example_runs() -> None:
    """docs/guides/hub-format.md's Python example, verbatim (it asserts equal outputs after the reload)."""
    guide = ROOT / "docs" / "guides" / "hub-format.md"
    m = re.search(r"<!-- example: hub-save -->\n```python\n(.*?)```", guide.read_text(), re.S)
    assert m, "the guide lost its example"
    ns: dict[str, Any] = {}
    exec(compile(m.group(1), str(guide), "exec"), ns)
    assert (ns["folder"] / "README.md").is_file() and ns["again"].config == ns["dense"].config


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_a_model_folder_follows_the_users_umask(tmp_path: Path, tiny_cfg: Any, umask: int) -> None:
    """A published folder is readable by whoever the user's umask lets read it (mkdtemp alone makes it 0700)."""
    from revit.models import build_model
    from revit.models.hub import save_pretrained

    old = os.umask(umask)
    try:
        out = save_pretrained(build_model(tiny_cfg), tmp_path / "m")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o777 & ~umask
    assert stat.S_IMODE(os.stat(out / "config.json").st_mode) == 0o666 & ~umask


def test_model_info_reads_a_model_folder_revit_wrote(tmp_path: Path, tiny_cfg: Any, cli: Any) -> None:
    from revit.models import build_model
    from revit.models.hub import save_pretrained

    save_pretrained(build_model(tiny_cfg), tmp_path / "m")
    code, out, err = cli("model", "info", tmp_path / "m", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert [(b["heads"], b["qk_dim"], b["v_dim"], b["mlp_dim"]) for b in d["blocks"]] == \
        [(b.heads, b.qk_dim, b.v_dim, b.mlp_dim) for b in tiny_cfg.blocks] and d["embed_dim"] == tiny_cfg.embed_dim
    (tmp_path / "plain").mkdir()
    code, out, err = cli("model", "info", tmp_path / "plain")
    assert code == 2 and err.count("\n") == 1 and "config.json" in err
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "config.json").write_text('{"architecture": "resnet18", "num_classes": 10}')
    code, out, err = cli("model", "info", tmp_path / "timm")
    assert code == 2 and "model convert local-dir:" in err


def test_blocks_without_a_branch_round_trip_through_local_dir(tmp_path: Path, tiny_cfg: Any) -> None:
    """A config with an attention-less block, an MLP-less one and a removed one: saved with its card, rebuilt by
    timm.create_model('local-dir:...', pretrained=True) elsewhere with equal outputs; the card says what is absent."""
    from revit.config import REMOVED, BlockDims
    from revit.models import ModelCard, build_model, save_pretrained

    base = tiny_cfg.with_blocks([*tiny_cfg.blocks, tiny_cfg.blocks[0]])
    cfg = tiny_cfg.with_blocks([BlockDims(0, 0, 0, 64), REMOVED, BlockDims(3, 4, 8, 0), tiny_cfg.blocks[2]])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    out = save_pretrained(model, tmp_path / "hub", card=ModelCard(base="a 4-block test ViT", base_config=base))
    x = torch.randn(4, cfg.in_chans, cfg.img_size, cfg.img_size)
    got = _reload_elsewhere(f"local-dir:{out.resolve()}", x, tmp_path, tmp_path / "elsewhere")
    with torch.no_grad():
        want = model(x)
    assert torch.allclose(got["logits"], want, rtol=0, atol=1e-6), float((got["logits"] - want).abs().max())
    doc = json.loads((out / "config.json").read_text())
    assert [b["heads"] for b in doc["model_args"]["config"]["blocks"]] == [0, 3, 1]
    card = (out / "README.md").read_text()
    assert "| 0 | 0 | 0 | 0 | 64 |" in card and "| 1 | 3 | 4 | 8 | 0 |" in card
    assert "block(s) 0 have no attention (0 heads)" in card and "block(s) 1 have no MLP (mlp 0)" in card
    assert "**Depth:** 3 of the base's 4 blocks (1 removed)" in card
    assert f"{_flop_macs(model, x):,}" in card
