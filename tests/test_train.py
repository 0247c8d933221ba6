import json
import os
import subprocess
import sys

import pytest
import torch

from revit.models import build_model
from revit.train_loop import GlobalBatchSampler, TrainConfig, evaluate, train


def _cfg():
    from revit.config import uniform

    return uniform(32, 2, 2, img_size=8, patch_size=4, in_chans=1, num_classes=10)  # 4 tokens: learns fast


def test_training_learns_digits(digits):
    torch.manual_seed(0)
    model = build_model(_cfg())
    before = evaluate(model, digits.val)
    res = train(model, digits.train, digits.val, TrainConfig(epochs=4, batch_size=32, lr=3e-3), progress=False)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.final["val_acc"] > max(0.8, before + 0.5)


def test_global_batches_are_split_across_ranks():
    one = list(GlobalBatchSampler(50, 8, seed=1))
    two = [list(GlobalBatchSampler(50, 8, seed=1, rank=r, world=2)) for r in range(2)]
    assert len(one) == 6
    for i, b in enumerate(one):
        assert two[0][i] + two[1][i] == b


def test_resume_equals_uninterrupted_run(digits, tmp_path, train_resumed):
    tc = TrainConfig(epochs=2, batch_size=64, lr=2e-3, max_steps_per_epoch=6)

    def run(out, stop_after=None):
        model = train_resumed(lambda: build_model(_cfg()), tc, digits.train, digits.val, out, stop_after)
        return model, [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]

    m1, log1 = run(tmp_path / "a")
    m2, log2 = run(tmp_path / "b", stop_after=1)
    assert [r["train_loss"] for r in log1] == pytest.approx([r["train_loss"] for r in log2], rel=1e-6)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_distillation_loss_is_hintons_kl():
    from revit.train_loop import distillation_loss

    s, t, temp = torch.randn(5, 7), torch.randn(5, 7), 3.0
    p_t = torch.softmax(t / temp, -1)
    manual = (p_t * (p_t.log() - torch.log_softmax(s / temp, -1))).sum(-1).mean() * temp**2
    torch.testing.assert_close(distillation_loss(s, t, temp), manual)


def test_distillation_pulls_student_to_teacher(digits):
    torch.manual_seed(0)
    teacher = build_model(_cfg())
    train(teacher, digits.train, None, TrainConfig(epochs=3, batch_size=32, lr=3e-3), progress=False)
    x = torch.stack([digits.val[i][0] for i in range(len(digits.val))])

    def agreement(m):
        with torch.no_grad():
            return (m.eval()(x).argmax(-1) == teacher(x).argmax(-1)).float().mean().item()

    student = build_model(_cfg())
    before = agreement(student)
    tc = TrainConfig(epochs=2, batch_size=32, lr=3e-3, distill_weight=1.0, distill_temperature=2.0)
    train(student, digits.train, digits.val, tc, teacher=teacher, progress=False)
    assert agreement(student) > max(0.7, before + 0.4)
    assert all(not p.requires_grad for p in teacher.parameters())


def test_torchrun_two_processes_match_one(tmp_path):
    """2 CPU processes (gloo) with the same global batch give the single-process loss."""
    common = ["train", "revit_micro", "--data", "fashion-mnist", "--train-limit", "2048", "--val-size", "500",
              "--test-limit", "500", "--epochs", "1", "--batch-size", "64", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "revit", *common, "--out", tmp_path / "one"], check=True, env=env,
                   capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    "-m", "revit", *common, "--out", tmp_path / "two"], check=True, env=env, capture_output=True,
                   timeout=300)
    one = json.loads((tmp_path / "one" / "log.jsonl").read_text())
    two = json.loads((tmp_path / "two" / "log.jsonl").read_text())
    assert one["steps"] == two["steps"] == 32
    # all-reduce sums in another order: agreement to float32 round-off, stated as 1e-5 relative
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
    assert two["val_acc"] == pytest.approx(one["val_acc"], abs=2 / 500)
