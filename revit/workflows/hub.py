"""Save a model, a config with weights, or a finished train/prune run folder in timm's hub format.

The library side of ``revit model save``: :func:`save_model` resolves what the user named, builds
the model with its weights, writes the folder with :func:`revit.models.hub.save_pretrained` and a
card that says what is known (a run's accuracy, its base model and trace plot).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from revit._io import load_json
from revit.errors import ConfigError
from revit.models.hub import ModelCard


def save_model(source: str | os.PathLike[str], out: str | os.PathLike[str], *, checkpoint: str | None = None,
               use_ema: bool = False, table: Any = None, overwrite: bool = False,
               card: ModelCard | None = None) -> Path:
    """Write ``source`` to ``out`` in timm's hub format; returns ``out``.

    ``source`` is a finished prune or train run folder (its pruned/trained weights and metrics), a
    preset name or a ViT-config YAML (with ``checkpoint`` weights, else a random init, said in the card).
    """
    from revit.models import build_model
    from revit.models.hub import check_model_folder, save_pretrained
    from revit.presets import resolve_config

    check_model_folder(out, overwrite)  # before anything is built
    src = Path(source)
    if src.is_dir():
        if checkpoint:
            raise ConfigError(f"{src} is a folder: a run folder gives its own weights; --checkpoint is for a name or "
                              "a config YAML")
        model, run_card = _from_run(src, use_ema)
        return save_pretrained(model, out, card=card or run_card, table=table, overwrite=overwrite)
    cfg = resolve_config(str(source))
    model = build_model(cfg, checkpoint=checkpoint, use_ema=use_ema)
    weights = f"weights from `{Path(checkpoint).name}`" if checkpoint else "random init (no checkpoint given)"
    card = card or ModelCard(base=cfg.name, notes=(f"Config `{src.name}`, {weights}.",))
    return save_pretrained(model, out, card=card, table=table, overwrite=overwrite)


def convert_card(timm_name: str, *, checkpoint: str | None = None, use_ema: bool = False,
                 pretrained: bool = False) -> ModelCard:
    """The card of ``revit model convert``: the timm architecture and where its weights came from."""
    weights = (f"weights from `{Path(checkpoint).name}`" + (" (EMA)" if use_ema else "") if checkpoint
               else "timm's pretrained weights" if pretrained else "random init")
    return ModelCard(base=timm_name, notes=(f"Converted from timm's `{timm_name}` by `revit model convert`, "
                                            f"{weights}.",))


def _from_run(run: Path, use_ema: bool) -> tuple[Any, ModelCard]:
    """The model and card of a finished run folder (prune: pruned.*; train: config.yaml + model*.safetensors)."""
    from revit.config import ViTConfig
    from revit.models import build_model
    from revit.run_folders import read_marker, run_file

    marker = read_marker(run)
    kind = marker.kind if marker is not None else None
    if kind not in ("prune", "train") or marker is None or not marker.finished:
        what = f"an unfinished {kind} run" if kind in ("prune", "train") else (f"a {kind} run" if kind else "no run")
        raise ConfigError(f"{run} holds {what}: give a finished prune or train run folder, a preset or a config YAML")
    metrics = load_json(run_file(run, "metrics.json"))  # every file of the run is read never through a link
    if kind == "prune":
        from revit.prune.card import TRACE_PLOT, prune_card
        from revit.trace import Trace

        if use_ema:
            raise ConfigError("--use-ema: a prune run has no EMA weights")
        cfg = ViTConfig.load(run_file(run, "pruned.yaml"))
        model = build_model(cfg, checkpoint=str(run_file(run, "pruned.safetensors")))
        run_file(run, *TRACE_PLOT.parts)  # copied into the model folder: refused when it is a link
        return model, prune_card(run, metrics, Trace.load(run_file(run, "trace.jsonl")).base_config)
    from revit.workflows.train import train_card

    cfg = ViTConfig.load(run_file(run, "config.yaml"))
    weights = run_file(run, "model_ema.safetensors" if use_ema else "model.safetensors")
    if not weights.is_file():
        raise ConfigError(f"{run}: no {weights.name}" + (" (the run kept no EMA)" if use_ema else ""))
    return build_model(cfg, checkpoint=str(weights)), train_card(run, metrics, cfg)


__all__ = ["convert_card", "save_model"]
