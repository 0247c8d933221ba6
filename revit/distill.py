"""NViT's distillation objective and the teachers it reads.

NViT trains a pruned ViT with cross-entropy, KL to the frozen *unpruned* model and, as DeiT does, a
CNN teacher's term, each with its weight (:class:`DistillLoss`).  A teacher is a revit config/name or
any timm model name (``resnet18``, ``regnety_160``: built by ``timm.create_model``, never downloaded),
with local weights read through :mod:`revit.safe_load` (:func:`load_teacher`); the unpruned model of
a pruning run is read back from its folder (:func:`unpruned_teacher`).  A teacher that does not fit the
student (classes, channels, input size) is refused in one line before anything trains.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from revit.errors import CheckpointError, ConfigError
from revit.input_checks import short
from revit.recipes import DISTILL_TYPES

TEACHER_TYPES = DISTILL_TYPES  # kl: KL at the temperature; hard: CE on the teacher's argmax (DeiT)
Logits = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at temperature T, times T^2 (Hinton), mean over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="batchmean",
                    log_target=True) * t * t


def teacher_term(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    """The teacher's term: CE on its argmax (``hard``, DeiT) or KL at ``temperature`` (``kl``)."""
    if kind == "hard":
        return F.cross_entropy(student, teacher.argmax(-1))
    return distillation_loss(student.float(), teacher.float(), temperature)


@dataclass(frozen=True)
class DistillLoss:
    """NViT's objective: ``ce_weight`` x CE + ``kl_weight`` x KL(unpruned || student) + ``teacher_weight`` x
    the teacher's term (KL or DeiT's hard labels).

    ``logits`` is the student's output, or its (class, distillation) pair for a DeiT-style model: the
    CE and the unpruned model's KL then train the class head and the teacher the distillation token;
    a model without one gets every term on its one head.  A term whose logits are not given is left out.
    """

    ce_weight: float = 1.0
    kl_weight: float = 1.0
    teacher_weight: float = 1.0
    temperature: float = 3.0
    teacher_type: str = "kl"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        from revit.recipes import check_loss_weights

        check_loss_weights(ce_weight=self.ce_weight, kl_weight=self.kl_weight, teacher_weight=self.teacher_weight,
                           temperature=self.temperature, teacher_type=self.teacher_type,
                           label_smoothing=self.label_smoothing)

    def terms(self, logits: Logits, base_logits: torch.Tensor | None = None,
              teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        """The distillation part alone (no cross-entropy): the KL to the unpruned model and the teacher's term."""
        cls_out, dist_out = logits if isinstance(logits, tuple) else (logits, logits)
        loss = cls_out.new_zeros((), dtype=torch.float32)
        if base_logits is not None and self.kl_weight:
            loss = loss + self.kl_weight * distillation_loss(cls_out.float(), base_logits.float(), self.temperature)
        if teacher_logits is not None and self.teacher_weight:
            loss = loss + self.teacher_weight * teacher_term(dist_out, teacher_logits, self.teacher_type,
                                                             self.temperature)
        return loss

    def __call__(self, logits: Logits, target: torch.Tensor, *, base_logits: torch.Tensor | None = None,
                 teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        """The whole loss of one batch (``target``: class indices)."""
        cls_out = logits[0] if isinstance(logits, tuple) else logits
        ce = F.cross_entropy(cls_out.float(), target, label_smoothing=self.label_smoothing)
        return self.ce_weight * ce + self.terms(logits, base_logits, teacher_logits)


def distill_loss(logits: Logits, target: torch.Tensor, *, base_logits: torch.Tensor | None = None,
                 teacher_logits: torch.Tensor | None = None, **weights: Any) -> torch.Tensor:
    """:class:`DistillLoss` of ``weights`` (``ce_weight``, ``kl_weight``, ``teacher_weight``, ``temperature``,
    ``teacher_type``, ``label_smoothing``) applied once: the loss for a user's own ``GlobalPruner`` loop."""
    return DistillLoss(**weights)(logits, target, base_logits=base_logits, teacher_logits=teacher_logits)


# --- teachers ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Teacher:
    """A frozen teacher and what names it in the trace header, metrics.json and the model card."""

    name: str
    module: nn.Module
    kind: str  # timm | revit | unpruned (a pruning run's base model)
    weights: str | None = None
    sha256: str | None = None

    def describe(self, role: str, weight: float) -> dict[str, Any]:
        """``{"role", "name", "kind", "weights", "sha256", "weight"}``: one teacher of a run, as JSON."""
        return {"role": role, "name": self.name, "kind": self.kind, "weights": self.weights, "sha256": self.sha256,
                "weight": weight}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes (names a teacher's weights, so a resumed run checks it has the same)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_revit_name(name: str) -> bool:
    """Whether ``name`` is a revit preset or a ViT-config file (else it may be a timm model name)."""
    from revit.presets import PRESETS

    return name in PRESETS or name.endswith((".yaml", ".yml")) or "/" in name or os.sep in name


def is_timm_name(name: str) -> bool:
    """Whether timm knows ``name`` as a model (architecture) name."""
    import timm

    return not is_revit_name(name) and bool(timm.is_model(name))


def create_timm(name: str, *, num_classes: int, in_chans: int) -> nn.Module:
    """``timm.create_model(name)`` for ``num_classes`` and ``in_chans``, random init (never a download)."""
    import timm

    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    except (TypeError, ValueError, RuntimeError, AssertionError) as e:
        raise ConfigError(f"timm cannot build {name} for {num_classes} classes and {in_chans} channel(s) "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None


def _classifier_classes(module: nn.Module, sd: Mapping[str, torch.Tensor]) -> tuple[str, int, int] | None:
    """(key, classes in ``sd``, classes of ``module``) when the two classifiers differ, else None."""
    names = getattr(module, "pretrained_cfg", {}).get("classifier") or ()
    own = module.state_dict()
    for c in (names,) if isinstance(names, str) else names:
        for key in (f"{c}.weight", f"{c}.bias"):
            if key in sd and key in own and sd[key].ndim >= 1 and sd[key].shape[0] != own[key].shape[0]:
                return key, int(sd[key].shape[0]), int(own[key].shape[0])
    return None


def load_weights(module: nn.Module, path: str | os.PathLike[str], name: str) -> None:
    """Load a local weights file into ``module`` (safetensors, or a weights-only torch file: no pickle runs)."""
    from revit.models.checkpoint import read_state_dict

    sd, _ = read_state_dict(path)
    other = _classifier_classes(module, sd)
    if other is not None:
        raise ConfigError(f"teacher {name}: {path} holds a classifier of {other[1]} classes ({other[0]}); the "
                          f"student has {other[2]}")
    own = module.state_dict()
    missing, unexpected = [k for k in own if k not in sd], [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {what} key(s), e.g. {v[0]}" for what, v in
                 (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong)) if v]
        raise CheckpointError(f"{path}: does not match teacher {name} ({'; '.join(parts)})",
                              hint="give the weights of that model")
    module.load_state_dict(sd, strict=True)


def check_fits(module: nn.Module, name: str, *, num_classes: int, in_chans: int, img_size: int) -> None:
    """Refuse a teacher whose output on the student's input is not ``num_classes`` logits (one dummy forward)."""
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, in_chans, img_size, img_size))
    except (RuntimeError, ValueError, AssertionError, TypeError) as e:
        raise ConfigError(f"teacher {name} does not take the student's input ({in_chans}x{img_size}x{img_size}): "
                          f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}") from None
    if isinstance(out, tuple):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"teacher {name} gives outputs of shape {got} for 2 images, not class logits")
    if out.shape[1] != num_classes:
        raise ConfigError(f"teacher {name} has {out.shape[1]} classes; the student has {num_classes}")


def load_teacher(name: str, weights: str | os.PathLike[str] | None, *, num_classes: int, in_chans: int,
                 img_size: int) -> Teacher:
    """A frozen teacher for a student of ``num_classes`` classes on ``in_chans`` x ``img_size``^2 images.

    ``name`` is a revit preset/config YAML or a timm model name; ``weights`` a local file (None: a
    random init, which the CLI allows only when asked for).  Refused in one line when it does not fit.
    """
    if is_revit_name(name):
        from revit.models import build_model
        from revit.presets import resolve_config

        module: nn.Module = build_model(resolve_config(name), checkpoint=weights)
        kind = "revit"
    elif is_timm_name(name):
        module, kind = create_timm(name, num_classes=num_classes, in_chans=in_chans), "timm"
        if weights is not None:
            load_weights(module, weights, name)
    else:
        raise ConfigError(f"teacher {short(name)} is neither a revit config/name nor a timm model name",
                          hint="e.g. --teacher resnet18 or --teacher revit_micro")
    check_fits(module, name, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    return Teacher(name=name, module=module.eval().requires_grad_(False), kind=kind,
                   weights=str(weights) if weights is not None else None,
                   sha256=file_sha256(weights) if weights is not None else None)


def unpruned_teacher(run: str | os.PathLike[str]) -> Teacher:
    """The unpruned model that the pruning run in folder ``run`` started from (its ``teacher.safetensors`` and
    its trace header's base config); a folder revit did not write as a prune run is refused in one line."""
    from revit.models import build_model
    from revit.run_folders import read_marker
    from revit.safe_load import load_safetensors
    from revit.trace import Trace

    folder = Path(run)
    marker = read_marker(folder) if folder.is_dir() and not folder.is_symlink() else None
    if marker is None or marker.kind != "prune":
        what = "no folder" if not folder.exists() else (f"{marker.kind} run" if marker else "not a revit run folder")
        raise ConfigError(f"--self-teacher {run}: {what}; it needs the folder of a `revit prune` run (with its run "
                          "marker)")
    files = [folder / "trace.jsonl", folder / "teacher.safetensors"]
    for f in files:
        if f.is_symlink() or not f.is_file():
            raise CheckpointError(f"{f}: {'a symbolic link' if f.is_symlink() else 'missing'}; revit reads the "
                                  "unpruned model only from the prune run's own files")
    base = Trace.load(files[0]).base_config
    module = build_model(base)
    try:
        module.load_state_dict(load_safetensors(files[1], "unpruned model weights"))
    except RuntimeError as e:
        raise CheckpointError(f"{files[1]}: does not match the trace's base config "
                              f"({str(e).splitlines()[0][:160]})") from None
    return Teacher(name=base.name or "base config", module=module.eval().requires_grad_(False), kind="unpruned",
                   weights=str(files[1]), sha256=file_sha256(files[1]))


def teacher_notes(metrics: Mapping[str, Any]) -> tuple[str, ...]:
    """One card line naming a run's teachers and their weights (none when it had none)."""
    ts = metrics.get("teachers") or []
    if not ts:
        return ()
    said = [f"{t.get('role')} `{t.get('name')}` (weight {t.get('weight')}"
            + (f", weights `{Path(str(t['weights'])).name}`" if t.get("weights") else "") + ")" for t in ts]
    return ("Distilled from " + " and ".join(said) + ".",)


__all__ = ["TEACHER_TYPES", "DistillLoss", "Teacher", "check_fits", "create_timm", "distill_loss",
           "distillation_loss", "file_sha256", "is_revit_name", "is_timm_name", "load_teacher", "load_weights",
           "teacher_notes", "teacher_term", "unpruned_teacher"]
