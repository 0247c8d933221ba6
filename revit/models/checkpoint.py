"""Checkpoint files: reading them through timm's loader, checking them against a model, inferring a config.

Files are read by ``timm.models.load_state_dict``: ``.pth``/``.pth.tar``/``.bin``/``.safetensors``,
timm ``train.py`` checkpoints (``last.pth.tar``, ``model_best.pth.tar``: ``state_dict`` and
``state_dict_ema``), DeiT's ``{"model": ...}`` and DDP/``torch.compile`` prefixes.  The plain
weights are used unless ``use_ema`` asks for the EMA ones, and :func:`read_state_dict` says which
part it took.  The per-block model uses timm's parameter names, so a timm state dict needs no
renaming; parts the per-block model lacks (register tokens, QK norm, ...) are refused with their name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from revit._io import atomic_output
from revit.config import BlockDims, ViTConfig
from revit.errors import CheckpointError

# key fragment -> the part it belongs to, for parts ReViT does not model
_UNSUPPORTED_KEYS = {
    "reg_token": "register tokens",
    "q_norm": "QK normalisation", "k_norm": "QK normalisation", "attn.norm.": "attention output norm",
    "norm_pre": "pre-norm (norm_pre)", "attn_pool": "attention pooling head", "patch_embed.norm": "patch-embed norm",
    "mlp.norm.": "MLP norm (scale_mlp_norm)", "fc1_g": "gated MLP (SwiGLU)", "fc1_x": "gated MLP (SwiGLU)",
    "pre_logits": "pre-logits layer",
}
# the parts of a checkpoint dict that hold weights, in timm's order of preference
EMA_KEYS = ("state_dict_ema", "model_ema")
PLAIN_KEYS = ("state_dict", "model")


def _wrapper_keys(path: Path) -> list[str]:
    """The top-level keys of a ``torch.save``-d dict (read lazily; the one load module: revit.safe_load)."""
    from revit.safe_load import checkpoint_top_keys

    return checkpoint_top_keys(path)


@dataclass(frozen=True)
class WeightsChoice:
    """Which weights of a checkpoint were taken: its EMA or plain entry, or a bare state dict (``str``: one line)."""

    path: str
    used: str | None  # the entry taken (``state_dict_ema``, ``state_dict``, ...), None for a bare state dict
    ema: str | None  # the file's EMA entry, if it has one
    took_ema: bool

    @property
    def ema_matters(self) -> bool:
        """The file has EMA weights, so which weights were taken is worth saying."""
        return self.ema is not None

    def __str__(self) -> str:
        if self.took_ema:
            return f"{self.path}: using the EMA weights ({self.ema})"
        if self.used is not None:
            return f"{self.path}: using the plain weights ({self.used})" + (
                f"; it also has EMA weights ({self.ema}): --use-ema / use_ema=True takes those" if self.ema else "")
        return f"{self.path}: using its state dict"


def read_state_dict(path: str | os.PathLike[str], use_ema: bool = False) -> tuple[dict[str, torch.Tensor],
                                                                                   WeightsChoice]:
    """The flat state dict of a checkpoint file (via timm's loader) and which weights it holds."""
    from revit.safe_load import timm_state_dict

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        parts = _wrapper_keys(p)
        sd: Any = timm_state_dict(p, use_ema=use_ema)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    ema = next((k for k in EMA_KEYS if k in parts), None)
    plain = next((k for k in PLAIN_KEYS if k in parts), None)
    if use_ema and ema is None:
        raise CheckpointError(f"{path}: has no EMA weights (no {' or '.join(EMA_KEYS)}); drop --use-ema")
    return dict(sd), WeightsChoice(str(path), ema if use_ema else plain, ema, use_ema)


def load_state_dict(path: str | os.PathLike[str], use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Read a local checkpoint file into a flat state dict (plain weights unless ``use_ema``)."""
    return read_state_dict(path, use_ema)[0]


def _refuse_unsupported(keys: Any, source: str) -> None:
    for k in keys:
        for frag, part in _UNSUPPORTED_KEYS.items():
            if frag in k:
                raise CheckpointError(f"{source}: has {part} ({k}), which revit's per-block ViT does not support")


def check_compatible(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the first missing/unexpected keys and shape mismatches."""
    _refuse_unsupported(sd.keys(), source)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in sd and sd[k].shape != v.shape]
    problems = _structure_mismatch(own.keys(), sd.keys())
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es), e.g. {'; '.join(wrong[:3])} (checkpoint vs config)")
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
    if problems:
        raise CheckpointError(f"{source} does not match the config: " + "; ".join(problems))


def _branches(keys: Any) -> dict[int, set[str]]:
    """Block index -> the branches (``attn``, ``mlp``) that have weights under ``keys``."""
    out: dict[int, set[str]] = {}
    for k in keys:
        parts = str(k).split(".")
        if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
            branch = {"norm1": "attn", "ls1": "attn", "norm2": "mlp", "ls2": "mlp"}.get(parts[2], parts[2])
            out.setdefault(int(parts[1]), set()).add(branch)
    return out


def _structure_mismatch(own: Any, theirs: Any) -> list[str]:
    """The depth or branch difference between a model's keys and a checkpoint's, said first (else nothing)."""
    mine, file = _branches(own), _branches(theirs)
    if len(mine) != len(file):
        return [f"the checkpoint has {len(file)} blocks, the config {len(mine)}"]
    for i in sorted(mine):
        for branch, what in (("attn", "attention"), ("mlp", "MLP")):
            if (branch in mine[i]) != (branch in file.get(i, set())):
                where = ("the config", "the checkpoint") if branch in mine[i] else ("the checkpoint", "the config")
                return [f"block {i} has {what} in {where[0]} but not in {where[1]}"]
    return []


MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on a header


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """The tensor shapes a ``.safetensors`` file declares in its header (read alone, no tensor data), else
    None (another format, or a header the reader itself will refuse)."""
    from revit._io import parse_json

    if path.suffix != ".safetensors" or not path.is_file():
        return None
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n <= min(MAX_HEADER_BYTES, path.stat().st_size - 8):
            return None
        header = parse_json(f.read(n), str(path))
    if not isinstance(header, dict):
        return None
    shapes = {}
    for k, v in header.items():
        shape = v.get("shape") if isinstance(v, dict) else None
        if k != "__metadata__" and isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape):
            shapes[k.removeprefix("module.")] = tuple(shape)  # timm's loader drops a DDP prefix too
    return shapes


def check_file_shapes(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Refuse a safetensors checkpoint that does not match ``model`` from its header alone, before any tensor
    is read (a 30 GB sparse file of the wrong shape costs no memory); other formats are checked after reading."""
    shapes = _header_shapes(Path(path))
    if shapes is not None:  # tensors on the meta device: shapes without storage
        check_compatible(model, {k: torch.empty(s, device="meta") for k, s in shapes.items()}, str(path))


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str], use_ema: bool = False) -> WeightsChoice:
    """Load a local checkpoint into ``model`` after checking it matches exactly; returns which weights it took."""
    check_file_shapes(model, path)
    sd, note = read_state_dict(path, use_ema)
    check_compatible(model, sd, str(path))
    model.load_state_dict(sd, strict=True)
    return note


def config_from_state_dict(sd: Mapping[str, torch.Tensor], heads: int | list[int] | None = None,
                           head_dim: int = 64, qk_dim: int | list[int] | None = None,
                           init_values: float = 1e-6) -> ViTConfig:
    """Infer a :class:`ViTConfig` from a timm-layout state dict.

    Head counts are not visible in the tensors: pass ``heads`` (per model or per block), else
    ``embed_dim // head_dim``.  ``qk_dim`` per head defaults to the V width (timm: QK == V).
    Layer scale (``ls1.gamma``) is recorded with ``init_values`` (its initial value is not in the
    tensors; DeiT-III's 1e-6 by default), and a position embedding without prefix rows as
    ``no_embed_class``.
    """
    _refuse_unsupported(sd.keys(), "state dict")
    try:
        pw = sd["patch_embed.proj.weight"]
        e, in_chans, p, _ = pw.shape
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        pos = sd["pos_embed"].shape[1]
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"state dict lacks {err}: not a timm ViT/DeiT") from None
    class_token = "cls_token" in sd
    distilled = "dist_token" in sd
    prefix = int(class_token) + int(distilled)
    grid = round((pos - prefix) ** 0.5)
    no_embed_class = False
    if grid * grid != pos - prefix:
        grid = round(pos**0.5)
        no_embed_class = prefix > 0 and grid * grid == pos
        if not no_embed_class:
            raise CheckpointError(f"pos_embed has {pos} tokens: not {prefix} prefix tokens + a square grid")
    head = sd.get("head.weight")
    num_classes = int(head.shape[0]) if head is not None else 0
    blocks = [_block_from_state_dict(sd, i, heads, head_dim, qk_dim) for i in range(depth)]
    has = {k.split(".", 2)[2] for k in sd if k.startswith("blocks.") and k.count(".") >= 2}
    return ViTConfig(embed_dim=int(e), blocks=tuple(blocks), img_size=grid * int(p), patch_size=int(p),
                     in_chans=int(in_chans), num_classes=num_classes, distilled=distilled,
                     class_token=class_token, qkv_bias="attn.qkv.bias" in has,
                     init_values=init_values if has & {"ls1.gamma", "ls2.gamma"} else None,
                     no_embed_class=no_embed_class)


def _block_from_state_dict(sd: Mapping[str, torch.Tensor], i: int, heads: int | list[int] | None, head_dim: int,
                           qk_dim: int | list[int] | None) -> BlockDims:
    """Block ``i``'s widths; a branch without weights is absent (heads 0 or mlp_dim 0)."""
    fc1 = sd.get(f"blocks.{i}.mlp.fc1.weight")
    mlp = int(fc1.shape[0]) if fc1 is not None else 0
    if f"blocks.{i}.attn.qkv.weight" not in sd:
        return BlockDims(0, 0, 0, mlp)
    qkv_out = sd[f"blocks.{i}.attn.qkv.weight"].shape[0]
    attn_v = sd[f"blocks.{i}.attn.proj.weight"].shape[1]
    h = heads[i] if isinstance(heads, list) else heads or max(1, attn_v // head_dim)
    if not h or attn_v % h or (qkv_out - attn_v) % (2 * h):
        raise CheckpointError(f"block {i}: widths qkv {qkv_out}, v {attn_v} do not split into {h} heads")
    qk = (qk_dim[i] if isinstance(qk_dim, list) else qk_dim) or (qkv_out - attn_v) // (2 * h)
    if 2 * h * qk + attn_v != qkv_out:
        raise CheckpointError(f"block {i}: qkv width {qkv_out} != heads x (2 x qk + v)")
    return BlockDims(h, qk, attn_v // h, mlp)


def save_weights(weights: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike[str], *,
                 hint: str | None = None) -> None:
    """Write a model's (or a state dict's) tensors as safetensors on the CPU, atomically: the one safetensors
    writer (a full or read-only disk is one OutputError line, with ``hint`` as the fix when given)."""
    from safetensors.torch import save_file

    sd = weights.state_dict() if isinstance(weights, nn.Module) else weights
    tensors = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    with atomic_output(path, hint=hint) as tmp:
        save_file(tensors, str(tmp))


def save_torch(obj: Any, path: str | os.PathLike[str], *, hint: str | None = None) -> None:
    """``torch.save`` ``obj`` (a run's resumable state, a training checkpoint) atomically: the one torch.save
    writer (a full or read-only disk is one OutputError line, with ``hint`` as the fix when given)."""
    with atomic_output(path, hint=hint) as tmp:
        torch.save(obj, tmp)
