"""timm's hub format for revit models: ``config.json`` + ``model.safetensors`` + a ``README.md`` model card.

:func:`save_pretrained` writes a folder that ``timm.create_model('local-dir:DIR', pretrained=True)``
rebuilds from any working directory (after ``import revit.models``, which registers the architectures):
``config.json`` is timm's own (written by ``timm.models.save_for_hf``) and embeds the whole
:class:`~revit.config.ViTConfig` as the ``config`` model argument, so it holds no file path.  The card
says what the model is: per-block widths, MACs and params, the predicted latency and the table it came
from (when a table is given), accuracy where known, and provenance (base model, pruning run, trace plot).
"""

from __future__ import annotations

import copy
import datetime
import errno
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from revit import counting
from revit._io import current_umask, writer_errors
from revit.config import ViTConfig
from revit.errors import ConfigError, FileFormatError, RevitError
from revit.run_folders import HUB_DIR, MARKER, RunKindError, RunMarker, claim_run, now, read_marker, write_marker

log = logging.getLogger(__name__)

CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, PLOT_FILE = "README.md", "config.json", "model.safetensors", "trace.png"
MODEL_KIND = "model"  # the run kind of a model folder: its marker lists these files (revit.run_folders.OUTPUTS)


@dataclass(frozen=True)
class ModelCard:
    """What a model card says beyond the model itself (the model gives its widths, MACs and params).

    ``accuracy`` maps a name (``"val top-1"``) to a fraction; ``base`` names what the model came from
    (a preset, a timm model, a checkpoint) and ``base_config`` its config, for the before/after counts;
    ``pruning_run`` and ``training_run`` are run folders; ``trace_plot`` an image copied into the
    folder as ``trace.png``; ``notes`` free lines.  Every field is optional.
    """

    title: str | None = None
    summary: str | None = None
    base: str | None = None
    base_config: ViTConfig | None = None
    pruning_run: str | None = None
    training_run: str | None = None
    trace_plot: str | os.PathLike[str] | None = None
    dataset: str | None = None
    accuracy: Mapping[str, float] = field(default_factory=dict)
    notes: Sequence[str] = ()
    license: str = "apache-2.0"


def save_pretrained(model: nn.Module, out_dir: str | os.PathLike[str], *, card: ModelCard | None = None,
                    table: Any = None, overwrite: bool = False) -> Path:
    """Write ``model`` to ``out_dir`` in timm's hub format with a model card; returns the folder.

    ``model`` is a revit model (a timm ViT/DeiT is converted first, same outputs).  ``table`` is a
    :class:`~revit.latency.table.LatencyTable` (or None): its predicted latency goes into the card.
    The folder is written beside ``out_dir`` and renamed into place, so a failure leaves no half folder;
    an existing model folder is replaced only with ``overwrite``, a folder of other files never.
    """
    from timm.models import save_for_hf

    from revit.models.convert import from_timm
    from revit.models.vit import ReViT, architecture_name, describe

    if not isinstance(model, ReViT):
        model = from_timm(model)
    if any(t.device.type != "cpu" for t in model.state_dict().values()):
        model = copy.deepcopy(model).cpu()
    cfg: ViTConfig = model.config
    out = check_model_folder(out_dir, overwrite)
    card = card or ModelCard()
    arch = architecture_name(cfg)
    with writer_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        # a name revit owns: a fresh temp folder (``_is_temp_of`` the run's hf/ entry), never a user's folder
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700: a published folder follows the user's umask
    try:
        with writer_errors(out):
            save_for_hf(model, str(tmp), safe_serialization=True,
                        model_config={"pretrained_cfg": {"architecture": arch, "description": describe(cfg)}})
            plot = PLOT_FILE if card.trace_plot is not None and _copy_plot(card.trace_plot, tmp / PLOT_FILE) else None
            (tmp / CARD_FILE).write_text(render_card(cfg, card, table=table, plot=plot, arch=arch))
            written = tuple(sorted(p.name for p in tmp.iterdir()))
            write_marker(tmp, RunMarker(kind=MODEL_KIND, created=now(), finished=True, files=written))
            check_model_folder(out, overwrite)  # again: nothing of a user's arrived while the model was written
            _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.debug("wrote %s (%s, %s, %s)", out, CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)
    return out


def check_model_folder(out_dir: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """``out_dir`` as a Path if a model folder may be written there, else a one-line :class:`RunExistsError`.

    A model folder is owned as a run folder is (:mod:`revit.run_folders`, kind ``model``): a new or empty folder is
    written; one that carries revit's model marker is replaced only with ``overwrite`` and only when it holds
    nothing but what the marker lists; any other folder (no marker, whatever it holds; a link; a file) never.
    The ``hf/`` folder of a run is the run's own (its marker lists it), so the run's claim decides for it.
    """
    out = Path(out_dir)
    if out.is_symlink():
        raise RunKindError(f"{out} is a symbolic link; revit never writes a model folder through one",
                           hint="give the folder it points to, or another --out")
    if _owned_by_run(out):
        return out
    claim = claim_run(out, MODEL_KIND, overwrite=overwrite)
    if claim.found is not None:
        foreign = sorted(p.name for p in out.iterdir() if p.name not in {*claim.found.owned, MARKER})
        if foreign:
            raise RunKindError(f"{out} holds files revit did not write ({', '.join(n[:40] for n in foreign[:8])}); "
                               "revit never replaces them", hint="move them out first, or choose another --out")
    return out


def _owned_by_run(out: Path) -> bool:
    """Whether ``out`` is the ``hf/`` folder of a run whose marker lists it as revit's."""
    found = read_marker(out.parent) if out.name == HUB_DIR and out.parent.is_dir() else None
    return found is not None and found.kind != MODEL_KIND and out.name in found.owned


def _copy_plot(src: str | os.PathLike[str], dst: Path) -> bool:
    """Copy the plot ``src`` to ``dst`` (False when there is none), never through a link (``O_NOFOLLOW``)."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise FileFormatError(f"{src} is a symbolic link; revit never copies a file through one into a model "
                                  "folder", hint="replace it with the file itself") from None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return False
        with open(dst, "wb") as g:
            shutil.copyfileobj(f, g)
    return True


def load_pretrained(folder: str | os.PathLike[str], **kwargs: Any) -> nn.Module:
    """The model saved in ``folder`` (``timm.create_model('local-dir:ABS_FOLDER', pretrained=True, **kwargs)``)."""
    import timm

    import revit.models.vit  # noqa: F401 - registers the architectures in timm

    path = Path(folder).resolve()
    if not (path / CONFIG_FILE).is_file():
        raise ConfigError(f"{folder}: no {CONFIG_FILE}: not a model folder (write one with revit model save)")
    return timm.create_model(f"local-dir:{path}", pretrained=True, **kwargs)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``; an old ``out`` (revit's, checked) is first moved aside to a
    fresh folder revit creates for it (never a name a user may hold, such as ``.NAME.old``) and removed last."""
    old = None
    if out.is_dir():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old.tmp"))
        os.replace(out, old)  # onto the empty folder just made
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fmt(n: float) -> str:
    return counting.format_count(n)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


@dataclass(frozen=True)
class _Latency:
    """A table's prediction for the card (any :class:`~revit.cost.LatencyTableLike` that predicts ``total_s``)."""

    total_s: float
    batch_size: int
    per_block_s: tuple[float, ...] | None
    fixed_known: bool
    note: str


def _predict(table: Any, cfg: ViTConfig) -> tuple[_Latency | None, str | None]:
    """The prediction of ``table`` for ``cfg``, or None and why (outside the measured range, other tokens)."""
    try:
        p = table.predict(cfg)
    except RevitError as e:
        return None, e.message
    per_block = getattr(p, "per_block_s", None)
    return _Latency(total_s=float(p.total_s), batch_size=int(getattr(p, "batch_size", table.batch_size)),
                    per_block_s=tuple(per_block) if per_block is not None else None,
                    fixed_known=bool(getattr(p, "fixed_known", True)), note=str(getattr(p, "note", ""))), None


def render_card(cfg: ViTConfig, card: ModelCard, *, table: Any = None, plot: str | None = None,
                arch: str = "revit") -> str:
    """The model card (markdown with the Hugging Face front matter) of a config and what is known about it."""
    from revit import __version__

    macs, params = counting.macs(cfg), counting.params(cfg)
    prediction, why_not = _predict(table, cfg) if table is not None else (None, None)
    title = card.title or cfg.name or f"ReViT ({_fmt(macs)} MACs)"
    front = ["---", "library_name: timm", f"license: {card.license}", "pipeline_tag: image-classification",
             "tags:", "- image-classification", "- timm", "- revit", "- vision-transformer"]
    if card.dataset:
        front += ["datasets:", f"- {card.dataset.lower()}"]
    lines = [*front, "---", f"# {title}", ""]
    lines.append(card.summary or "A Vision Transformer whose blocks each have their own widths (heads, QK and V "
                 "width per head, MLP width), made with revit (NViT pruning, ReViT design rules).")
    lines += ["", "## Use", "", "```python", "import timm", "import revit.models  # registers revit's architectures "
              "in timm", "", 'model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True).eval()',
              "```", "", "## Model", "",
              f"- **Architecture:** `{arch}` (the whole config is in `config.json`, under `model_args.config`)",
              f"- **Input:** {cfg.in_chans} x {cfg.img_size} x {cfg.img_size}, patch {cfg.patch_size}, "
              f"{cfg.tokens} tokens{' (with a distillation token)' if cfg.distilled else ''}",
              f"- **Classes:** {cfg.num_classes}",
              f"- **Embedding width:** {cfg.embed_dim}, **depth:** {cfg.depth}",
              f"- **Params:** {_fmt(params)} ({params:,})",
              f"- **MACs:** {_fmt(macs)} per image ({macs:,}; {counting.CONVENTIONS['nvit']})",
              f"- **MACs, linear layers only:** {_fmt(counting.macs(cfg, 'timm'))} ({counting.CONVENTIONS['timm']})"]
    if prediction is not None:
        lines.append(f"- **Predicted latency:** {_ms(prediction.total_s)} per batch of {prediction.batch_size} "
                     f"({_ms(prediction.total_s / prediction.batch_size)} per image)"
                     f"{'' if prediction.fixed_known else ', blocks only (the table has no fixed parts)'}")
    per_block = prediction.per_block_s if prediction is not None else None
    lines += ["", "## Per-block widths", "",
              "QK and V widths are per head; MACs and params per block" + (", latency per block from the table"
                                                                           if per_block else "") + ".",
              ""]
    head = "| block | heads | qk/head | v/head | mlp | MACs | params |" + (" latency |" if per_block else "")
    lines += [head, "|" + "---:|" * (head.count("|") - 1)]
    for i, b in enumerate(cfg.blocks):
        row = (f"| {i} | {b.heads} | {b.qk_dim} | {b.v_dim} | {b.mlp_dim} | "
               f"{_fmt(counting.block_macs(cfg.embed_dim, b, cfg.tokens))} | "
               f"{_fmt(counting.block_params(cfg.embed_dim, b, cfg.qkv_bias))} |")
        if per_block:
            row += f" {_ms(per_block[i])} |"
        lines.append(row)
    lines += _absent_lines(cfg)
    if table is not None:
        lines += ["", "## Latency table", ""]
        source = getattr(table, "source", None)
        name = Path(source).name if source else "(in memory)"
        summary = table.summary() if hasattr(table, "summary") else type(table).__name__
        lines.append(f"- **Table:** `{name}`: {summary}")
        if prediction is None:
            lines.append(f"- no prediction: {why_not}")
        elif prediction.note:
            lines.append(f"- note: {prediction.note}")
    if card.accuracy:
        lines += ["", "## Accuracy", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {100 * v:.2f}% |" for k, v in card.accuracy.items()]
        if card.dataset:
            lines.append(f"\nOn {card.dataset}.")
    lines += ["", "## Provenance", ""]
    if card.base:
        lines.append(f"- **Base model:** {card.base}")
    if card.base_config is not None:
        bm, bp = counting.macs(card.base_config), counting.params(card.base_config)
        lines.append(f"- **Base:** {_fmt(bm)} MACs, {_fmt(bp)} params; this model {macs / bm:.3f} x the MACs, "
                     f"{params / bp:.3f} x the params")
        if card.base_config.depth != cfg.depth:
            lines.append(f"- **Depth:** {cfg.depth} of the base's {card.base_config.depth} blocks "
                         f"({card.base_config.depth - cfg.depth} removed)")
    if card.pruning_run:
        lines.append(f"- **Pruning run:** `{card.pruning_run}` (trace: `trace.jsonl`, metrics: `metrics.json`)")
    if card.training_run:
        lines.append(f"- **Training run:** `{card.training_run}`")
    lines += [f"- {n}" for n in card.notes]
    lines.append(f"- Written by revit {__version__} on {datetime.date.today().isoformat()}.")
    if plot:
        lines += ["", "### Pruning trace", "", f"![widths at every pruning step]({plot})"]
    return "\n".join(lines) + "\n"


def _absent_lines(cfg: ViTConfig) -> list[str]:
    """The card's note on blocks without a branch (none when every block has both)."""
    no_attn = [str(i) for i, b in enumerate(cfg.blocks) if not b.has_attention]
    no_mlp = [str(i) for i, b in enumerate(cfg.blocks) if not b.has_mlp]
    if not (no_attn or no_mlp):
        return []
    parts = ([f"block(s) {', '.join(no_attn)} have no attention (0 heads)"] if no_attn else []) + \
        ([f"block(s) {', '.join(no_mlp)} have no MLP (mlp 0)"] if no_mlp else [])
    return ["", f"Absent branches: {'; '.join(parts)}: such a branch has no weights, its LayerNorm included, "
                "and the block is the other branch and its residual."]


__all__ = ["HUB_DIR", "ModelCard", "check_model_folder", "load_pretrained", "render_card", "save_pretrained"]
