"""Issue 27, round four: ownership, links and model folders.

A run's marker lists only what revit wrote, by name (class 1); model folders carry the same marker and a
folder revit did not write is never replaced, nor a user's ``.NAME.old`` touched (classes 2, 3); no file
of a run is read or copied through a link (class 5); a hub ``config.json`` goes through the memory check
(class 7); ``model convert`` refuses foreign or broken hub folders and ``hf-hub:`` without ``--pretrained``
in one line, with no network access (class 19); a full disk during ``model convert`` is one line and leaves
no half folder (class 18); a safetensors checkpoint's shapes are checked from its header before any tensor
is read (class 21, last bullet).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from conftest import fill_disk, run_cli
from test_run_folders import checksums

from revit.run_folders import MARKER, claim_run, read_marker


def _refused(cli: Any, root: Path, *argv: Any, fragments: tuple[str, ...] = ()) -> str:
    """``revit ARGV`` exits 2 with one ``revit: error:`` line (containing ``fragments``) and changes nothing
    under ``root``."""
    before = checksums(root)
    code, out, err = cli(*argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("revit: error:"), (code, err)
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, err
    assert checksums(root) == before
    return err


def _tiny_hub(tmp_path: Path, tiny_cfg: Any, name: str = "hub") -> Path:
    from revit.models import build_model, save_pretrained

    return save_pretrained(build_model(tiny_cfg), tmp_path / name)


# class 1: a file added while a run goes is the user's ----------------------------------------------------------
def test_a_file_added_during_a_run_is_never_claimed(cli, tmp_path, monkeypatch):
    """``notes.txt`` written into the folder while ``model convert`` runs stays out of the marker, and the next
    ``--overwrite`` keeps it byte for byte (the marker lists revit's outputs by name, not what is new)."""
    import revit.models.checkpoint as ckpt

    out = tmp_path / "conv"
    save = ckpt.save_weights

    def save_and_meddle(*args: Any, **kwargs: Any) -> None:
        (out / "notes.txt").write_text("mine, written while the run went")
        save(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_weights", save_and_meddle)
    code, _, err = cli("model", "convert", "vit_tiny_patch16_224", "--out", out)
    assert code == 0, err
    marker = read_marker(out)
    assert marker is not None and marker.finished and "notes.txt" not in marker.files
    assert set(marker.files) == {"config.yaml", "model.safetensors", "hf"}
    hf = read_marker(out / "hf")  # the run's hub folder carries the model marker too
    assert hf is not None and hf.kind == "model" and set(hf.files) == {"config.json", "model.safetensors", "README.md"}
    monkeypatch.setattr(ckpt, "save_weights", save)
    assert cli("model", "convert", "vit_tiny_patch16_224", "--out", out, "--overwrite")[0] == 0
    assert (out / "notes.txt").read_text() == "mine, written while the run went"


def test_the_marker_lists_the_kinds_outputs_only(tmp_path):
    """The claim API itself: whatever appears in the folder between begin and finish is not revit's."""
    out = tmp_path / "r"
    claim = claim_run(out, "prune")
    claim.begin()
    (out / "trace.jsonl").write_text("{}\n")
    (out / "mine.csv").write_text("a,b\n")
    (out / "plots-of-mine").mkdir()
    claim.finish()
    marker = read_marker(out)
    assert marker is not None and not {"mine.csv", "plots-of-mine"} & set(marker.files)
    claim_run(out, "prune", overwrite=True).begin()
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "mine.csv", "plots-of-mine"]


# classes 2 and 3: model folders ----------------------------------------------------------------------------------
FOREIGN_FOLDERS: dict[str, dict[str, str]] = {
    "a config.json and a .git": {"config.json": "{}", "NOTES.md": "n", ".git/HEAD": "ref: refs/heads/main"},
    "timm's own hub files, no marker": {"config.json": '{"architecture": "vit_tiny_patch16_224"}',
                                        "model.safetensors": "x", "README.md": "# mine"},
    "only a README": {"README.md": "# my model"},
    "a dot file": {".env": "SECRET=1"},
}


@pytest.mark.parametrize("what", list(FOREIGN_FOLDERS))
def test_model_save_never_replaces_a_folder_revit_did_not_write(cli, tmp_path, what):
    """Must show: ``revit model save`` onto a folder revit did not write refuses in one line, whatever it
    holds, with and without --overwrite; every file keeps its bytes."""
    c = tmp_path / "c"
    for name, text in FOREIGN_FOLDERS[what].items():
        (c / name).parent.mkdir(parents=True, exist_ok=True)
        (c / name).write_text(text)
    for extra in ((), ("--overwrite",)):
        _refused(cli, tmp_path, "model", "save", "revit_micro", "--out", c, *extra,
                 fragments=("without revit's run marker",))


def test_model_save_keeps_a_users_old_folder(cli, tmp_path):
    """A user's ``.m.old`` beside the output is never touched, neither on a first save nor on --overwrite."""
    h = tmp_path / "h"
    (h / "m").mkdir(parents=True)
    (h / ".m.old").mkdir()
    (h / ".m.old" / "b").write_text("b")
    assert cli("model", "save", "revit_micro", "--out", h / "m")[0] == 0
    assert cli("model", "save", "revit_micro", "--out", h / "m", "--overwrite")[0] == 0
    assert (h / ".m.old" / "b").read_text() == "b"
    assert sorted(p.name for p in h.iterdir()) == [".m.old", "m"]  # no temp or backup folder of revit's left
    marker = read_marker(h / "m")
    assert marker is not None and marker.kind == "model" and set(marker.files) == {
        "config.json", "model.safetensors", "README.md"}


def test_model_overwrite_refuses_files_the_marker_does_not_list(cli, tmp_path, tiny_cfg):
    """A revit model folder to which a user added a file is not replaced: the file would go with it."""
    hub = _tiny_hub(tmp_path, tiny_cfg)
    (hub / "NOTES.md").write_text("mine")
    _refused(cli, tmp_path, "model", "save", "revit_micro", "--out", hub, "--overwrite",
             fragments=("NOTES.md", "did not write"))
    (hub / "NOTES.md").unlink()
    assert cli("model", "save", "revit_micro", "--out", hub, "--overwrite")[0] == 0


def test_model_save_refuses_a_link_as_its_folder(cli, tmp_path, tiny_cfg):
    hub = _tiny_hub(tmp_path, tiny_cfg)
    (tmp_path / "link").symlink_to(hub)
    _refused(cli, tmp_path, "model", "save", "revit_micro", "--out", tmp_path / "link", "--overwrite",
             fragments=("symbolic link",))


# class 5: links inside a run -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prune_run(tmp_path_factory) -> Path:
    """A finished tiny prune run (digits, two blocks)."""
    from revit.config import BlockDims, ViTConfig

    root = tmp_path_factory.mktemp("prune")
    ViTConfig(embed_dim=16, blocks=(BlockDims(2, 4, 4, 32),) * 2, img_size=8, patch_size=2, in_chans=1,
              num_classes=10).save(root / "tiny.yaml")
    code = run_cli(["prune", "--model", root / "tiny.yaml", "--data", "digits", "--val-size", "200",
                    "--test-limit", "0", "--target-macs", "0.6", "--batch-size", "64", "--eval-size", "100",
                    "--no-progress", "--out", root / "run"])
    assert code == 0
    return root / "run"


@pytest.mark.parametrize("link", ["plots/widths_vs_step.png", "plots", "metrics.json", "pruned.yaml"])
def test_model_save_of_a_run_never_reads_through_a_link(cli, tmp_path, prune_run, link):
    """A link planted in a run (at the trace plot, its folder, a file the card reads) is refused in one line;
    the link's target (a user's secret) is never copied into the model folder."""
    import shutil

    run = tmp_path / "p"
    shutil.copytree(prune_run, run, symlinks=True)
    secret = tmp_path / "id_ed25519"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    target = run / link
    if target.is_dir():
        shutil.rmtree(target)
        secret_dir = tmp_path / "ssh"
        secret_dir.mkdir()
        (secret_dir / "widths_vs_step.png").write_text(secret.read_text())
        target.symlink_to(secret_dir)
    else:
        if link != "plots/widths_vs_step.png":  # the same bytes behind the link: the run would load as before
            shutil.copyfile(target, secret)
        target.unlink()
        target.symlink_to(secret)
    _refused(cli, tmp_path, "model", "save", run, "--out", tmp_path / "hub", fragments=("symbolic link",))
    assert not (tmp_path / "hub").exists()


def test_model_save_of_a_clean_run_copies_its_plot(cli, tmp_path, prune_run):
    code, _, err = cli("model", "save", prune_run, "--out", tmp_path / "hub")
    assert code == 0, err
    assert (tmp_path / "hub" / "trace.png").read_bytes() == (prune_run / "plots" / "widths_vs_step.png").read_bytes()


# class 7: a hub config.json's widths go through the memory check -------------------------------------------------
def _widen(hub: Path, embed_dim: int) -> None:
    doc = json.loads((hub / "config.json").read_text())
    doc["model_args"]["config"]["embed_dim"] = embed_dim
    (hub / "config.json").write_text(json.dumps(doc))


def test_hub_config_widths_are_checked_for_memory(cli, tmp_path, tiny_cfg):
    """``embed_dim: 10**8`` in a hub config.json: timm.create_model('local-dir:...', pretrained=True) raises a
    RevitError before allocating, and ``model convert`` says the real reason (memory) in one line."""
    import timm

    from revit.errors import ConfigError

    hub = _tiny_hub(tmp_path, tiny_cfg)
    _widen(hub, 10**8)
    with pytest.raises(ConfigError, match="more than this machine's"):
        timm.create_model(f"local-dir:{hub.resolve()}", pretrained=True)
    err = _refused(cli, tmp_path, "model", "convert", f"local-dir:{hub.resolve()}", "--out", tmp_path / "conv",
                   fragments=("more than this machine's",))
    assert "unknown timm model" not in err


# class 19: model convert's refusals ------------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "fragment"), [
    ({"architecture": "resnet18"}, "cannot build timm model"),
    ({"architecture": "no_such_model_anywhere"}, "is not a timm model"),
    ({"architecture": None}, "is not a timm model"),
    ({"model_args": {"drop_rate": 5}}, "cannot build timm model"),
])
def test_convert_refuses_a_foreign_hub_folder_in_one_line(cli, tmp_path, tiny_cfg, change, fragment):
    hub = _tiny_hub(tmp_path, tiny_cfg)
    doc = json.loads((hub / "config.json").read_text())
    for k, v in change.items():
        doc[k] = {**doc[k], **v} if isinstance(v, dict) else v
    (hub / "config.json").write_text(json.dumps(doc))
    _refused(cli, tmp_path, "model", "convert", f"local-dir:{hub.resolve()}", "--out", tmp_path / "conv",
             fragments=(fragment,))


def test_convert_hf_hub_without_pretrained_never_touches_the_network(cli, tmp_path, monkeypatch):
    """``hf-hub:NAME`` without --pretrained is refused in one line before any connection or name lookup."""
    tried: list[Any] = []

    def no_network(*args: Any, **kwargs: Any) -> Any:
        tried.append(args)
        raise OSError("the test forbids network access")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    _refused(cli, tmp_path, "model", "convert", "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k", "--out",
             tmp_path / "conv", fragments=("--pretrained",))
    assert tried == []


# class 18 (model convert half): a full disk ---------------------------------------------------------------------
def test_convert_on_a_full_disk_is_one_line_and_leaves_nothing(cli, small_tmpfs, tmp_path, tiny_cfg, monkeypatch):
    """The disk fills while convert writes its hf/ folder (safetensors' own error type): one line, exit 2, and
    no half folder with an unfinished marker."""
    import revit.workflows.hub as wh

    hub = _tiny_hub(tmp_path, tiny_cfg)
    card = wh.convert_card

    def fill_then_card(*args: Any, **kwargs: Any) -> Any:
        fill_disk(small_tmpfs)
        return card(*args, **kwargs)

    monkeypatch.setattr(wh, "convert_card", fill_then_card)
    out = small_tmpfs / "conv"
    code, _, err = cli("model", "convert", f"local-dir:{hub.resolve()}", "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no space left" in err, err
    assert not out.exists()
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler"]


def test_a_failed_run_discards_only_its_own_files(tmp_path):
    """After a failure (the full disk above), a new run's own outputs, temp files and marker go, with the folders
    it created; a user's file that appeared meanwhile and an empty folder that was there before stay."""
    out = tmp_path / "there"
    out.mkdir()
    claim = claim_run(out, "model-convert")
    claim.begin()
    (out / "config.yaml").write_text("embed_dim: 8\n")
    (out / ".model.safetensors.abc123.tmp").write_bytes(b"half a file")
    (out / "mine.txt").write_text("mine")
    claim.discard()
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    (out / "mine.txt").unlink()
    claim = claim_run(out, "model-convert")
    claim.begin()
    (out / "hf").mkdir()
    claim.discard()
    assert out.is_dir() and not any(out.iterdir())  # the user's empty folder stays
    new = tmp_path / "a" / "b"
    claim = claim_run(new, "model-convert")
    claim.begin()
    (new / "model.safetensors").write_bytes(b"w")
    claim.discard()
    assert not (tmp_path / "a").exists()


def test_save_pretrained_on_a_full_disk_is_an_output_error(small_tmpfs, tiny_cfg):
    """The one hub writer (train, prune and convert write hf/ with it) turns safetensors' error into OutputError."""
    from revit.errors import OutputError
    from revit.models import build_model, save_pretrained

    model = build_model(tiny_cfg)
    fill_disk(small_tmpfs)
    with pytest.raises(OutputError, match="no space left"):
        save_pretrained(model, small_tmpfs / "m")
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler"]


# class 21, last bullet: shapes from the safetensors header -------------------------------------------------------
def test_a_huge_sparse_checkpoint_is_refused_from_its_header(cli, tmp_path, tiny_cfg, monkeypatch):
    """A 30 GB sparse safetensors file whose pos_embed has the wrong shape is refused from its header: no
    tensor is read (safetensors' loader is never called)."""
    import safetensors.torch

    from revit.models import build_model
    from revit.models.checkpoint import save_weights

    model = build_model(tiny_cfg)
    sd = {k: v.shape for k, v in model.state_dict().items()}
    sd["pos_embed"] = (1, 7_500_000_000 // 4, 4)  # 30 GB of float32
    header, offset = {}, 0
    for k, shape in sd.items():
        n = 4
        for d in shape:
            n *= d
        header[k] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (tmp_path / "ckpt").mkdir()
    big = tmp_path / "ckpt" / "big.safetensors"  # outside the folder _refused checksums
    work = tmp_path / "work"
    work.mkdir()
    with open(big, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + offset)  # sparse: no block is written
    assert big.stat().st_size > 30 * 10**9
    read: list[str] = []

    def no_read(*args: Any, **kwargs: Any) -> Any:
        read.append(str(args[0]))
        raise MemoryError("the test forbids reading the tensors")

    monkeypatch.setattr(safetensors.torch, "load_file", no_read)
    tiny_cfg.save(work / "tiny.yaml")
    _refused(cli, work, "model", "save", work / "tiny.yaml", "--checkpoint", big, "--out", work / "hub",
             fragments=("shape mismatch", "pos_embed"))
    assert read == []
    save_weights(model, tmp_path / "ok.safetensors")  # a matching file passes the header check and loads
    monkeypatch.undo()
    assert cli("model", "save", work / "tiny.yaml", "--checkpoint", tmp_path / "ok.safetensors", "--out",
               work / "hub")[0] == 0
    assert os.path.getsize(work / "hub" / "model.safetensors") > 0


def test_the_demo_report_copies_no_plot_through_a_link(tmp_path):
    """The demo's report copies its stages' plots; one that is a link (to a user's secret) is left out."""
    from revit.workflows.demo import DemoPlan, write_demo_readme

    plots = tmp_path / "2-prune" / "plots"
    plots.mkdir(parents=True)
    (tmp_path / "secret").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (plots / "widths_vs_step.png").symlink_to(tmp_path / "secret")
    (plots / "final_profile.png").write_bytes(b"\x89PNG a real plot")
    summary = {"base": {"test_acc": 0.5}, "base_latency_ms": 1.0,
               "prune": {"steps": 1, "macs_ratio": 0.5, "cost_ratio": 0.5, "test_accuracy": 0.5},
               "fit_r2": {}, "configs": {}, "seconds": {}}
    write_demo_readme(tmp_path, tmp_path / "report", DemoPlan(), summary)
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["README.md", "final_profile.png"]
    assert "widths_vs_step" not in (tmp_path / "report" / "README.md").read_text()
