"""The training loop at its users' scale, checked on the CPU: device choice, mixed precision, loader
workers, gradient accumulation, device-agnostic checkpoints, the DeiT recipe on a real ImageFolder."""

import copy
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from revit.config import uniform
from revit.data import DataSpec, load_splits
from revit.devices import GlobalBatchSampler
from revit.errors import CheckpointError, ConfigError
from revit.models import build_model
from revit.recipes import TrainConfig
from revit.train_loop import evaluate, load_checkpoint_state, train


def _cfg(**kw):
    return uniform(32, 2, 2, **{"img_size": 8, "patch_size": 4, "in_chans": 1, "num_classes": 10, **kw})


def test_train_config_validates_new_fields():
    for bad in ({"device": "gpu"}, {"amp": "fp8"}, {"recipe": "vit"}, {"grad_accum": 0}, {"loader_workers": -1},
                {"mixup": float("nan")}, {"random_erase": 1.5}, {"model_ema_decay": 1.0}, {"lr": float("inf")},
                {"compile": "yes"}, {"distill_type": "soft"}, {"label_smoothing": 1.0}):
        with pytest.raises(ConfigError) as e:
            TrainConfig(**bad)
        assert next(iter(bad)) in str(e.value) and "\n" not in str(e.value)
    tc = TrainConfig.for_recipe("deit", batch_size=256, grad_accum=2, lr=None)
    assert tc.lr == pytest.approx(5e-4 * 512 / 512) and tc.warmup_epochs == 5 and tc.drop_path_rate == 0.1
    r = tc.resolved()
    assert (r.mixup, r.cutmix, r.random_erase, r.auto_augment, r.distill_type) == (
        0.8, 1.0, 0.25, "rand-m9-mstd0.5-inc1", "hard")
    assert TrainConfig.for_recipe("deit", mixup=0.0).resolved().mixup == 0.0  # an explicit value wins
    assert TrainConfig(loader_workers=3).workers == 3


def test_cli_trains_bf16_with_two_loader_workers(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "revit", "train", "revit_micro", "--data", "fashion-mnist", "--train-limit", "512",
           "--val-size", "256", "--test-limit", "256", "--epochs", "1", "--batch-size", "64", "--device", "cpu",
           "--amp", "bf16", "--workers", "2", "--threads", "1", "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    log = json.loads((out / "log.jsonl").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert log["steps"] == 8 and np.isfinite(log["train_loss"]) and 0.0 <= metrics["test_acc"] <= 1.0
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["train_config"]["amp"] == "bf16" and state["train_config"]["loader_workers"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_cli_cuda_without_gpu_is_one_line_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "revit", "train", "revit_micro", "--device", "cuda", "--out",
                        str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no CUDA GPU" in p.stderr
    assert not (tmp_path / "r").exists()


def test_grad_accum_equals_one_step_at_double_batch(digits, monkeypatch):
    """2 micro-batches of B accumulated (loss / 2 each) = one optimizer step on the 2B batch.

    With plain SGD (linear in the gradient, unlike Adam) so that a wrong loss scale shows.
    """
    import revit.train_loop

    monkeypatch.setattr(revit.train_loop, "make_optimizer", lambda m, c: torch.optim.SGD(m.parameters(), lr=c.lr))

    def run(batch, accum):
        torch.manual_seed(0)
        model = build_model(_cfg())
        tc = TrainConfig(epochs=1, batch_size=batch, grad_accum=accum, lr=0.05, max_steps_per_epoch=4,
                         grad_clip=None, device="cpu")
        res = train(model, digits.train, None, tc, progress=False)
        return model, res.final

    m1, r1 = run(32, 1)
    m2, r2 = run(16, 2)
    assert r1["steps"] == r2["steps"] == 4
    assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-5)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)


def test_fp16_with_grad_scaler_and_bf16_train_on_cpu(digits):
    for amp in ("fp16", "bf16"):
        torch.manual_seed(0)
        model = build_model(_cfg())
        res = train(model, digits.train, digits.val, TrainConfig(epochs=2, batch_size=32, lr=3e-3, amp=amp,
                                                                 device="cpu"), progress=False)
        assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
        assert res.final["val_acc"] > 0.5
        assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def test_checkpoint_is_cpu_and_resumes_under_other_runtime_fields(digits, tmp_path):
    """A CPU-written checkpoint loads through the one map_location path; device/workers may change."""
    base = TrainConfig(epochs=2, batch_size=64, lr=2e-3, max_steps_per_epoch=5, device="cpu")
    torch.manual_seed(0)
    ref = build_model(_cfg())
    train(ref, digits.train, None, base, tmp_path / "ref", progress=False)

    def stop(rec):
        raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train(build_model(_cfg()), digits.train, None, base, tmp_path / "b", on_epoch=stop, progress=False)
    state = load_checkpoint_state(tmp_path / "b" / "checkpoint.pt")
    tensors = [v for v in state["model"].values()] + [
        t for s in state["optimizer"]["state"].values() for t in s.values() if isinstance(t, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    moved = dataclasses.replace(base, device="auto", loader_workers=2)
    m = build_model(_cfg())
    train(m, digits.train, None, moved, tmp_path / "b", resume=True, progress=False)
    for (k, a), b in zip(ref.state_dict().items(), m.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    other = dataclasses.replace(base, recipe="deit")
    with pytest.raises(CheckpointError, match="another training recipe"):
        train(build_model(_cfg()), digits.train, None, other, tmp_path / "b", resume=True, progress=False)


def test_hard_distillation_trains_the_dist_head_on_teacher_argmax(digits):
    """One step's recorded loss = CE(class head, labels) + w * CE(dist head, teacher argmax)."""
    torch.manual_seed(1)
    teacher = build_model(_cfg())
    torch.manual_seed(2)
    student = build_model(_cfg(distilled=True))
    before = copy.deepcopy(student)
    tc = TrainConfig(epochs=1, batch_size=32, lr=1e-3, max_steps_per_epoch=1, label_smoothing=0.0,
                     distill_weight=0.7, recipe="deit", mixup=0.0, cutmix=0.0, random_erase=0.0, device="cpu")
    train_ds = load_splits(DataSpec("digits", img_size=8, val_size=300), tc).train
    torch.manual_seed(3)
    res = train(student, train_ds, None, tc, teacher=teacher, progress=False)
    # the same first batch, through the same augmentation RNG
    idx = next(iter(GlobalBatchSampler(len(train_ds), 32, seed=0)))
    torch.manual_seed(0)
    x = torch.stack([train_ds[i][0] for i in idx])
    y = torch.tensor([int(train_ds[i][1]) for i in idx])
    before.train()
    before.distilled_training = True
    cls, dist = before(x)
    manual = F.cross_entropy(cls, y) + 0.7 * F.cross_entropy(dist, teacher(x).argmax(-1))
    assert res.final["train_loss"] == pytest.approx(manual.item(), rel=1e-5)
    assert student.distilled_training is False  # restored: eval averages both heads as DeiT


def test_model_ema_is_evaluated(digits):
    torch.manual_seed(0)
    model = build_model(_cfg())
    res = train(model, digits.train, digits.val, TrainConfig(epochs=1, batch_size=32, lr=3e-3, model_ema=True,
                                                             model_ema_decay=0.9, device="cpu"), progress=False)
    assert res.ema is not None and "val_acc_ema" in res.final
    assert res.final["val_acc_ema"] == pytest.approx(evaluate(res.ema, digits.val))
    assert any(not torch.equal(a, b) for a, b in zip(res.ema.parameters(), model.parameters(), strict=True))


@pytest.fixture(scope="module")
def fm_folder(tmp_path_factory):
    """Fashion-MNIST images written as an RGB PNG ImageFolder (train/ and val/ class trees)."""
    from PIL import Image

    from revit.data.datasets import fashion_mnist_dir, read_idx

    d = fashion_mnist_dir()
    x, y = read_idx(d / "train-images-idx3-ubyte.gz"), read_idx(d / "train-labels-idx1-ubyte.gz")
    root = tmp_path_factory.mktemp("fm_png")
    count: dict[tuple[str, int], int] = {}
    for img, label in zip(x[:600], y[:600], strict=True):
        split = "val" if count.get(("val", int(label)), 0) < 3 and count.get(("train", int(label)), 0) >= 8 else "train"
        n = count.get((split, int(label)), 0)
        if n >= (8 if split == "train" else 3):
            continue
        count[(split, int(label))] = n + 1
        (root / split / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).convert("RGB").save(root / split / f"c{label}" / f"{n}.png")
    return root


def test_deit_recipe_on_an_image_folder_uses_timm_transforms(fm_folder, monkeypatch):
    import timm
    from timm.data import IMAGENET_DEFAULT_MEAN
    from timm.loss import SoftTargetCrossEntropy

    cfg = _cfg(img_size=32, patch_size=8, in_chans=3)
    tc = TrainConfig.for_recipe("deit", epochs=1, batch_size=16, loader_workers=2, device="cpu")
    model = build_model(cfg)
    splits = load_splits(DataSpec(str(fm_folder), val_size=10, img_size=32), tc, model=model)
    assert (splits.num_classes, splits.in_chans, len(splits.train), len(splits.val), len(splits.test)) == (
        10, 3, 70, 10, 30)
    train_tf = splits.train.dataset.transform
    names = [type(t).__name__ for t in train_tf.transforms]
    assert {"RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment", "RandomErasing"} <= set(names)
    assert all(type(t).__module__.startswith(("timm.", "torchvision.")) for t in train_tf.transforms)
    a, b = splits.train[0][0], splits.train[0][0]  # the same image, drawn twice (two epochs)
    assert a.shape == (3, 32, 32) and not torch.equal(a, b)
    v1, v2 = splits.val[0][0], splits.val[0][0]
    assert torch.equal(v1, v2)  # evaluation transform: deterministic
    norm = [t for t in splits.val.dataset.transform.transforms if type(t).__name__ == "Normalize"][0]
    assert list(norm.mean) == pytest.approx(IMAGENET_DEFAULT_MEAN)
    inception = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)  # mean 0.5 in its cfg
    other = load_splits(DataSpec(str(fm_folder), val_size=10, img_size=32), tc, model=inception)
    norm = [t for t in other.val.dataset.transform.transforms if type(t).__name__ == "Normalize"][0]
    assert list(norm.mean) == pytest.approx(inception.pretrained_cfg["mean"]) != pytest.approx(IMAGENET_DEFAULT_MEAN)

    targets = []
    forward = SoftTargetCrossEntropy.forward

    def spy(self, x, target):
        targets.append(target.detach().clone())
        return forward(self, x, target)

    monkeypatch.setattr(SoftTargetCrossEntropy, "forward", spy)
    res = train(model, splits.train, splits.val, tc, progress=False)
    assert res.final["steps"] == 4 and np.isfinite(res.final["train_loss"]) and len(targets) == 4
    for t in targets:
        assert t.shape == (16, 10)
        torch.testing.assert_close(t.sum(-1), torch.ones(16))
        assert t.max() < 1.0 and (t > 0.2).sum(-1).ge(1).all()  # smoothed and mixed: no one-hot rows
        assert ((t > 0.05).sum(-1) >= 2).any()  # at least one row mixes two classes


def test_tensor_datasets_get_only_tensor_augmentations(digits):
    tc = TrainConfig(recipe="deit")
    s = load_splits(DataSpec("digits", img_size=8, val_size=300), tc)
    plain = load_splits(DataSpec("digits", img_size=8, val_size=300))
    assert s.train.indices == plain.train.indices
    torch.manual_seed(0)
    changed = sum(not torch.equal(s.train[i][0], plain.train[i][0]) for i in range(20))
    assert changed >= 15  # random resized crop (+ erasing) on nearly every image
    assert all(torch.equal(s.val[i][0], plain.val[i][0]) for i in range(20))  # held-out images untouched
    assert s.train[0][0].shape == plain.train[0][0].shape
    assert torch.equal(load_splits(DataSpec("digits", img_size=8), TrainConfig()).train[0][0], plain.train[0][0])


def _two_runs(digits, **kw):
    out = []
    for extra in ({}, kw):
        torch.manual_seed(0)
        model = build_model(_cfg())
        res = train(model, digits.train, None, TrainConfig(epochs=1, batch_size=32, lr=3e-3, max_steps_per_epoch=6,
                                                           device="cpu", **extra), progress=False)
        out.append((model, res.final["train_loss"]))
    return out


def test_channels_last_changes_layout_not_results(digits):
    (m1, l1), (m2, l2) = _two_runs(digits, channels_last=True)
    assert l2 == pytest.approx(l1, rel=1e-5)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_model_trains_like_eager(digits):
    (m1, l1), (m2, l2) = _two_runs(digits, compile=True)
    assert l2 == pytest.approx(l1, rel=1e-3)
    assert "_orig_mod" not in "".join(m2.state_dict())  # checkpoints keep the plain names


def test_fp16_resume_restores_the_grad_scaler(digits, tmp_path, train_resumed):
    """An fp16 run stopped after epoch 1 and resumed ends where the uninterrupted one does (scaler state too)."""
    tc = TrainConfig(epochs=2, batch_size=64, lr=2e-3, max_steps_per_epoch=5, amp="fp16", device="cpu")

    def run(out, stop_after=None):
        model = train_resumed(lambda: build_model(_cfg()), tc, digits.train, None, out, stop_after)
        return model, load_checkpoint_state(out / "checkpoint.pt")

    m1, s1 = run(tmp_path / "a")
    m2, s2 = run(tmp_path / "b", stop_after=1)
    assert s1["scaler"]["scale"] == s2["scaler"]["scale"] and s1["scaler"]["_growth_tracker"] == 10
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


@pytest.mark.slow
def test_torchrun_two_processes_with_accumulation_match_one(tmp_path):
    """2 gloo processes x 2 accumulated micro-batches of 32 = 1 process, batch 64 (DDP no_sync path)."""
    common = ["train", "revit_micro", "--data", "fashion-mnist", "--train-limit", "1024", "--val-size", "500",
              "--test-limit", "200", "--epochs", "1", "--threads", "1", "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "revit", *common, "--batch-size", "64", "--out", tmp_path / "one"],
                   check=True, env=env, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                    "revit", *common, "--batch-size", "32", "--grad-accum", "2", "--out", tmp_path / "two"],
                   check=True, env=env, capture_output=True, timeout=300)
    one = json.loads((tmp_path / "one" / "log.jsonl").read_text())
    two = json.loads((tmp_path / "two" / "log.jsonl").read_text())
    assert one["steps"] == two["steps"] == 16
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
    assert two["val_acc"] == pytest.approx(one["val_acc"], abs=2 / 500)
