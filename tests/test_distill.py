"""Issue 29: NViT's whole recipe - a timm CNN teacher and the unpruned model at once, in pruning and fine-tuning.

At micro size on digits (8x8): ``revit train`` trains a timm CNN (``test_resnet``), ``revit prune`` distills
from it and from the unpruned model, ``revit train --init --teacher --self-teacher`` fine-tunes from both;
the loss helper is checked against a NumPy computation, which head each teacher trains on a DeiT-style
model, and every bad teacher is refused in one line before anything is written.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import run_cli

from revit.config import BlockDims, ViTConfig
from revit.run_folders import MARKER

DATA = ["--data", "digits", "--train-limit", "256", "--val-size", "64", "--test-limit", "64", "--batch-size", "32",
        "--threads", "1", "--no-progress"]
CNN = "test_resnet"  # a small timm CNN (timm.create_model, random init, no download)


def tiny(path: Path, **kw: Any) -> Path:
    cfg = ViTConfig(**{"embed_dim": 32, "blocks": (BlockDims(2, 8, 8, 64),) * 2, "img_size": 8, "patch_size": 4,
                       "in_chans": 1, "num_classes": 10, **kw})
    cfg.save(path)
    return path


def ok(args: list[Any]) -> None:
    assert run_cli(args) == 0, args


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained timm CNN, a two-teacher prune of a tiny ViT and its two-teacher fine-tune."""
    root = tmp_path_factory.mktemp("distill")
    cfg = tiny(root / "tiny.yaml")
    r = {"cfg": cfg, "cnn": root / "cnn", "prune": root / "prune", "ft": root / "ft", "root": root}
    ok(["train", CNN, *DATA, "--epochs", "2", "--out", r["cnn"]])
    ok(["prune", "--model", cfg, *DATA, "--target-macs", "0.6", "--epochs", "1", "--eval-size", "64", "--teacher",
        CNN, "--teacher-weights", r["cnn"] / "model.safetensors", "--teacher-weight", "0.5", "--out", r["prune"]])
    ok(["train", r["prune"] / "pruned.yaml", "--init", r["prune"] / "pruned.safetensors", *DATA, "--epochs", "1",
        "--teacher", CNN, "--teacher-weights", r["cnn"] / "model.safetensors", "--self-teacher", r["prune"],
        "--kl-weight", "0.7", "--out", r["ft"]])
    return r


def test_revit_train_trains_a_timm_cnn(runs: dict[str, Path]) -> None:
    """``revit train NAME`` with a timm CNN name: its weights load into ``timm.create_model(NAME)``; it learns."""
    import timm

    from revit.data import DataSpec, load_splits
    from revit.safe_load import load_safetensors
    from revit.train_loop import evaluate

    m = json.loads((runs["cnn"] / "metrics.json").read_text())
    assert m["timm_model"] == CNN and m["macs"] is None
    model = timm.create_model(CNN, num_classes=10, in_chans=1)
    model.load_state_dict(load_safetensors(runs["cnn"] / "model.safetensors"))
    assert m["params"] == sum(p.numel() for p in model.parameters())
    test = load_splits(DataSpec("digits", train_limit=256, val_size=64, test_limit=64, seed=0)).test
    assert evaluate(model, test) == pytest.approx(m["test_acc"])
    assert m["test_acc"] > 0.3  # far above chance (0.1) after two epochs on 256 images


def test_two_teacher_prune_names_both_teachers(runs: dict[str, Path]) -> None:
    """Issue 29 must-show: ``prune --teacher NAME --teacher-weights W`` runs; the trace header, metrics.json and
    the card name the unpruned model and the CNN with their weights."""
    import hashlib

    header = json.loads((runs["prune"] / "trace.jsonl").read_text().splitlines()[0])
    roles = {t["role"]: t for t in header["teachers"]}
    assert roles["unpruned model"]["weight"] == 1.0 and roles["unpruned model"]["weights"] == "teacher.safetensors"
    cnn = roles["teacher"]
    w = runs["cnn"] / "model.safetensors"
    assert (cnn["name"], cnn["kind"], cnn["weight"]) == (CNN, "timm", 0.5)
    assert cnn["sha256"] == hashlib.sha256(w.read_bytes()).hexdigest()
    assert header["settings"]["teacher_weight"] == 0.5 and header["settings"]["teacher"] == CNN
    m = json.loads((runs["prune"] / "metrics.json").read_text())
    assert m["teachers"] == header["teachers"] and m["ce_weight"] == 1.0
    card = (runs["prune"] / "hf" / "README.md").read_text()
    assert f"teacher `{CNN}` (weight 0.5" in card and "unpruned model" in card


def test_two_teacher_finetune_reads_the_unpruned_model_from_the_run(runs: dict[str, Path]) -> None:
    """Issue 29 must-show: ``train --init --teacher NAME --self-teacher RUN`` runs, distilling from the CNN and
    from the unpruned model that RUN pruned (its teacher.safetensors, whose hash metrics.json records)."""
    import hashlib

    m = json.loads((runs["ft"] / "metrics.json").read_text())
    roles = {t["role"]: t for t in m["teachers"]}
    assert roles["teacher"]["name"] == CNN and roles["teacher"]["weight"] == 1.0
    unpruned = roles["unpruned model"]
    assert unpruned["weight"] == 0.7
    assert unpruned["sha256"] == hashlib.sha256((runs["prune"] / "teacher.safetensors").read_bytes()).hexdigest()
    card = (runs["ft"] / "hf" / "README.md").read_text()
    assert "Distilled from teacher" in card and "unpruned model" in card


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_distill_loss_matches_a_numpy_computation() -> None:
    """The public helper: CE + w_kl T^2 KL(base || s) + w_t (KL or CE on the teacher's argmax), per head."""
    from revit.prune import DistillLoss, distill_loss

    g = torch.Generator().manual_seed(0)
    s, d, b, t = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(4))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    T, wce, wkl, wt = 2.0, 0.3, 0.7, 1.5

    def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:  # KL(p || q) at T, times T^2, mean over rows
        lp, lq = _np_log_softmax(p_logits / T), _np_log_softmax(q_logits / T)
        return float((np.exp(lp) * (lp - lq)).sum(-1).mean() * T * T)

    ce = float(-_np_log_softmax(s.numpy())[np.arange(6), y.numpy()].mean())
    want = wce * ce + wkl * kl(b.numpy(), s.numpy()) + wt * kl(t.numpy(), d.numpy())
    got = distill_loss((s, d), y, base_logits=b, teacher_logits=t, ce_weight=wce, kl_weight=wkl, teacher_weight=wt,
                       temperature=T)
    assert float(got) == pytest.approx(want, rel=1e-6)
    hard = -_np_log_softmax(s.numpy())[np.arange(6), t.numpy().argmax(-1)].mean()
    one_head = DistillLoss(ce_weight=0.0, kl_weight=0.0, teacher_weight=wt, teacher_type="hard")(
        s, y, teacher_logits=t)
    assert float(one_head) == pytest.approx(wt * hard, rel=1e-6)


def _heads_after(tmp_path: Path, **tc: Any) -> dict[str, bool]:
    """Train a distilled (DeiT-style) tiny ViT for a few steps with a CNN teacher and/or a self-teacher and
    no cross-entropy: which of its heads moved."""
    import timm

    from revit.data import DataSpec, load_splits
    from revit.models import build_model
    from revit.train_loop import TrainConfig, train

    sp = load_splits(DataSpec("digits", img_size=8, train_limit=128, val_size=0, seed=0))
    torch.manual_seed(0)
    cfg = ViTConfig(embed_dim=32, blocks=(BlockDims(2, 8, 8, 64),), img_size=8, patch_size=4, in_chans=1,
                    num_classes=10, distilled=True)
    student, base = build_model(cfg), build_model(cfg)
    cnn = timm.create_model(CNN, num_classes=10, in_chans=1)
    before = {k: v.clone() for k, v in student.state_dict().items() if k.startswith("head")}
    conf = TrainConfig(epochs=1, batch_size=32, ce_weight=0.0, weight_decay=0.0, device="cpu", **tc)
    train(student, sp.train, None, conf, teacher=cnn if conf.distill_weight else None,
          self_teacher=base if conf.self_distill_weight else None, progress=False)
    return {k: not torch.equal(v, student.state_dict()[k]) for k, v in before.items() if k.endswith("weight")}


def test_cnn_teacher_trains_the_distillation_token_and_the_unpruned_model_the_class_head(tmp_path: Path) -> None:
    """Issue 29 item 1: on a DeiT-style student the CNN teacher's term reaches the distillation head only; with
    a self-teacher too, the class head learns from the unpruned model's KL."""
    assert _heads_after(tmp_path, distill_weight=1.0) == {"head.weight": False, "head_dist.weight": True}
    assert _heads_after(tmp_path, distill_weight=1.0, self_distill_weight=1.0) == {
        "head.weight": True, "head_dist.weight": True}


def killed_after_first_state(args: list[Any]) -> None:
    """Run ``revit ARGS`` (a prune) in a new process, SIGKILLed right after its first ``state.pt``."""
    hook = ("import os, signal, sys; import revit.prune.loop as r; f = r.PruneRun._save_state\n"
            "def g(self):\n    f(self); os.kill(os.getpid(), signal.SIGKILL)\n"
            "r.PruneRun._save_state = g\nfrom revit.cli.main import main\nsys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", hook, *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]


def test_resumed_prune_refuses_other_cnn_weights(cli: Any, runs: dict[str, Path], tmp_path: Path) -> None:
    """A killed two-teacher prune resumed with another CNN weights file (same name, other contents) is refused
    in one line, its folder unchanged."""
    from safetensors.torch import load_file, save_file

    out, other = tmp_path / "p", tmp_path / "other.safetensors"
    sd = load_file(str(runs["cnn"] / "model.safetensors"))
    save_file({k: v * 0.5 if v.is_floating_point() else v for k, v in sd.items()}, str(other))
    args = ["prune", "--model", runs["cfg"], *DATA, "--target-macs", "0.6", "--epochs", "1", "--eval-size", "64",
            "--teacher", CNN, "--out", out]
    killed_after_first_state([*args, "--teacher-weights", runs["cnn"] / "model.safetensors"])
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = cli(*args, "--teacher-weights", other, "--resume")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "teacher_sha256" in err, err[-2000:]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_older_prune_state_without_teacher_keys_resumes(runs: dict[str, Path], tmp_path: Path) -> None:
    """A prune run written before issue 29 (no teacher keys in its state's settings) still resumes."""
    cfg, out = runs["cfg"], tmp_path / "old"
    args = ["prune", "--model", cfg, *DATA, "--target-macs", "0.6", "--epochs", "1", "--eval-size", "64",
            "--out", out]
    killed_after_first_state(args)
    st = torch.load(out / "state.pt", weights_only=True)
    for k in ("teacher", "teacher_sha256", "teacher_weight", "teacher_type"):
        st["settings"].pop(k)
    torch.save(st, out / "state.pt")
    ok([*args, "--resume"])
    assert json.loads((out / MARKER).read_text())["finished"]


# --- bad teachers: one line, exit 2, nothing written --------------------------------------------------------
def _refused(cli: Any, args: list[Any], needle: str, out: Path) -> str:
    code, _, err = cli(*args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("revit: error: "), err[-2000:]
    assert needle in lines[0], lines[0]
    assert not out.exists(), "a refused run wrote its folder"
    return lines[0]


class _Payload:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("command", ["prune", "train"])
def test_bad_teachers_are_refused_in_one_line(cli: Any, runs: dict[str, Path], tmp_path: Path,
                                              command: str) -> None:
    """Issue 29 item 5: a pickle payload (never runs), another class count, a missing or truncated weights file,
    a name that is no model, an input the teacher cannot take: exit 2, one line, no folder written."""
    from safetensors.torch import save_file

    cfg, good = runs["cfg"], runs["cnn"] / "model.safetensors"
    out = tmp_path / "out"
    head = ["prune", "--model", cfg, "--target-macs", "0.6"] if command == "prune" else ["train", cfg]
    def args(*teacher: Any) -> list[Any]:
        return [*head, *DATA, "--out", out, *teacher]

    fired = tmp_path / "payload-ran"
    payload = tmp_path / "payload.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload(fired)}, payload, pickle_protocol=2)
    with pytest.raises(FileExistsError):  # the payload is live: a plain pickle load runs it
        pickle.loads(pickle.dumps(_Payload(tmp_path)))
    _refused(cli, args("--teacher", CNN, "--teacher-weights", payload), "never runs code", out)
    assert not fired.exists()
    five = tmp_path / "five.safetensors"  # the same CNN trained for 5 classes
    import timm

    save_file(timm.create_model(CNN, num_classes=5, in_chans=1).state_dict(), str(five))
    _refused(cli, args("--teacher", CNN, "--teacher-weights", five), "classifier of 5 classes", out)
    _refused(cli, args("--teacher", CNN, "--teacher-weights", tmp_path / "missing.safetensors"), "no such", out)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _refused(cli, args("--teacher", CNN, "--teacher-weights", cut), "cut.safetensors", out)
    _refused(cli, args("--teacher", "no_such_model_x", "--teacher-random-init"), "neither a revit config", out)
    big = tiny(tmp_path / "big.yaml", img_size=16)  # a ViT teacher for 16x16 images
    _refused(cli, args("--teacher", big, "--teacher-random-init"), "does not take the student's input", out)
    wide = tiny(tmp_path / "wide.yaml", num_classes=7)
    _refused(cli, args("--teacher", wide, "--teacher-random-init"), "has 7 classes; the student has 10", out)


def test_self_teacher_must_be_a_prune_run_revit_wrote(cli: Any, runs: dict[str, Path], tmp_path: Path) -> None:
    """``--self-teacher`` at a folder without revit's marker (a copy of a prune run's files), at a training run,
    or at a prune run whose teacher file is a link: one line, exit 2, nothing changed there or written."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(runs["prune"], copy)
    (copy / MARKER).unlink()
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    out = tmp_path / "ft"
    base = ["train", runs["prune"] / "pruned.yaml", "--init", runs["prune"] / "pruned.safetensors", *DATA,
            "--out", out]
    _refused(cli, [*base, "--self-teacher", copy], "not a revit run folder", out)
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    _refused(cli, [*base, "--self-teacher", runs["cnn"]], "train run", out)
    linked = tmp_path / "linked"
    shutil.copytree(runs["prune"], linked)
    (linked / "teacher.safetensors").unlink()
    (linked / "teacher.safetensors").symlink_to(runs["prune"] / "teacher.safetensors")
    _refused(cli, [*base, "--self-teacher", linked], "symbolic link", out)


def test_resumed_finetune_refuses_other_teachers(cli: Any, runs: dict[str, Path], tmp_path: Path) -> None:
    """A fine-tune's checkpoints name its teachers (and their weights' hash): resuming it with another CNN
    weights file is refused in one line, the folder unchanged; with the same teachers it resumes."""
    import shutil

    from safetensors.torch import load_file, save_file

    run = tmp_path / "ft"
    shutil.copytree(runs["ft"], run)
    marker = json.loads((run / MARKER).read_text())
    (run / MARKER).write_text(json.dumps({**marker, "finished": False}))  # as if killed after its last epoch
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    other = tmp_path / "other.safetensors"
    sd = load_file(str(runs["cnn"] / "model.safetensors"))
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}, str(other))
    args = ["train", runs["prune"] / "pruned.yaml", "--init", runs["prune"] / "pruned.safetensors", *DATA,
            "--epochs", "1", "--self-teacher", runs["prune"], "--kl-weight", "0.7", "--teacher", CNN, "--out", run,
            "--resume"]
    code, _, err = cli(*args, "--teacher-weights", other)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "other teachers" in err, err[-2000:]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    code, _, err = cli(*args, "--teacher-weights", runs["cnn"] / "model.safetensors")
    assert code == 0, err[-2000:]
    assert json.loads((run / MARKER).read_text())["finished"]


def test_prune_of_a_distilled_student_with_a_cnn_teacher(runs: dict[str, Path], tmp_path: Path) -> None:
    """A DeiT-style student (distillation token) prunes with the CNN teacher on its distillation head; the dense
    export answers like the masked model (both heads averaged at eval) and loads as a distilled model."""
    from revit.models import build_model

    cfg = tiny(tmp_path / "deit.yaml", distilled=True)
    out = tmp_path / "p"
    ok(["prune", "--model", cfg, *DATA, "--target-macs", "0.6", "--epochs", "1", "--eval-size", "64", "--teacher",
        CNN, "--teacher-weights", runs["cnn"] / "model.safetensors", "--teacher-type", "hard", "--out", out])
    m = json.loads((out / "metrics.json").read_text())
    assert m["dense_vs_masked_max_abs_diff"] < 1e-4 and m["macs_ratio"] <= 0.6
    model = build_model(ViTConfig.load(out / "pruned.yaml"), checkpoint=out / "pruned.safetensors").eval()
    assert model.dist_token is not None and model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    header = json.loads((out / "trace.jsonl").read_text().splitlines()[0])
    assert header["settings"]["teacher_type"] == "hard"
