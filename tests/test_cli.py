"""The command line: help examples, and bad input as one line on stderr, exit code 2, no file touched."""

import json
import subprocess
import sys

import pytest
import torch


def test_version_and_help(cli):
    from revit.cli.main import main

    assert main(["--version"]) == 0  # argparse's exits are returned, not raised
    from revit.cli.main import build_parser

    text = build_parser().format_help()
    for cmd in ("model", "train", "demo"):
        assert cmd in text


@pytest.mark.parametrize("sub", [["model", "info"], ["model", "export-onnx"], ["train"], ["demo"]])
def test_every_command_has_an_example(sub):
    out = subprocess.run([sys.executable, "-m", "revit", *sub, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "example:" in out.stdout


def test_model_info_json_matches_counting(cli, tiny_cfg, tmp_path):
    from revit import counting

    tiny_cfg.save(tmp_path / "c.yaml")
    code, out, _ = cli("model", "info", tmp_path / "c.yaml", "--json")
    d = json.loads(out)
    assert code == 0 and d["macs"] == counting.macs(tiny_cfg) and d["params"] == counting.params(tiny_cfg)
    assert [b["qk_dim"] for b in d["blocks"]] == [8, 4, 16]
    code, out, _ = cli("model", "info", "revit_small")
    assert code == 0 and "4.71G" in out and "4.40G" in out


def _one_line_error(code, out, err, *fragments):
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("revit: error:"), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, err


def test_malformed_yaml(cli, tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("schema: revit/vit-config/v1\nembed_dim: [1, 2\n")
    _one_line_error(*cli("model", "info", p), "malformed YAML")


def test_negative_dims(cli, tiny_cfg, tmp_path):
    d = tiny_cfg.to_dict()
    d["blocks"][0]["heads"] = -2
    import yaml

    (tmp_path / "neg.yaml").write_text(yaml.safe_dump(d))
    _one_line_error(*cli("model", "info", tmp_path / "neg.yaml"), "heads must be >= 0")


def test_mismatched_checkpoint_leaves_existing_output_alone(cli, tiny_cfg, tmp_path):
    from revit.models import build_model

    tiny_cfg.save(tmp_path / "c.yaml")
    other = tiny_cfg.with_blocks(tiny_cfg.blocks[:2])
    torch.save(build_model(other).state_dict(), tmp_path / "w.pth")
    target = tmp_path / "model.onnx"
    target.write_bytes(b"precious")
    _one_line_error(*cli("model", "export-onnx", tmp_path / "c.yaml", "--checkpoint", tmp_path / "w.pth",
                         "--out", target), "does not match the config")
    assert target.read_bytes() == b"precious"


def test_missing_dataset(cli, tmp_path, monkeypatch):
    import revit.data.datasets as d

    monkeypatch.setattr(d, "FASHION_MNIST_DIRS", (str(tmp_path / "none"),))
    monkeypatch.delenv("REVIT_FASHION_MNIST", raising=False)
    _one_line_error(*cli("train", "revit_micro", "--epochs", "1", "--out", tmp_path / "run"),
                    "apt-get install dataset-fashion-mnist")
    _one_line_error(*cli("train", "revit_micro", "--data", tmp_path / "nowhere", "--out", tmp_path / "run"),
                    "no such dataset folder")


def test_unknown_model(cli):
    _one_line_error(*cli("model", "info", "revit_giant"), "known: revit_deit_base")


def test_train_refuses_to_overwrite_a_run(cli, tmp_path):
    args = ["train", "revit_micro", "--data", "digits", "--epochs", "1", "--val-size", "100",
            "--out", tmp_path / "run"]
    code, _, _ = cli(*args)
    assert code == 0
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    _one_line_error(*cli(*args), "--overwrite")
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["test_acc"] <= 1 and metrics["macs"] == 15_560_640


def test_process_exit_code_is_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "revit", "model", "info", str(tmp_path / "x.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such file" in r.stderr


def test_convert_local_timm_checkpoint(cli, tmp_path):
    import timm

    from revit.models import build_model
    from revit.presets import resolve_config

    t = timm.create_model("deit_tiny_distilled_patch16_224")
    torch.save({"model": t.state_dict()}, tmp_path / "deit.pth")
    code, _, err = cli("model", "convert", "deit_tiny_distilled_patch16_224", "--checkpoint", tmp_path / "deit.pth",
                       "--out", tmp_path / "conv")
    assert code == 0, err
    cfg = resolve_config(str(tmp_path / "conv" / "config.yaml"))
    r = build_model(cfg, checkpoint=tmp_path / "conv" / "model.safetensors").eval()
    x = torch.randn(2, 3, 224, 224)
    hub = timm.create_model(f"local-dir:{tmp_path / 'conv' / 'hf'}", pretrained=True).eval()  # timm's hub format
    with torch.no_grad():
        torch.testing.assert_close(r(x), t.eval()(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(hub(x), t(x), atol=1e-5, rtol=0)
    assert "deit.pth" in (tmp_path / "conv" / "hf" / "README.md").read_text()
    _one_line_error(*cli("model", "convert", "deit_small_patch16_224", "--checkpoint", tmp_path / "deit.pth",
                         "--out", tmp_path / "bad"), "shape mismatch")
