"""The dimension trace: widths of every block at every pruning step, as JSON lines.

Line 1 is a header ``{"schema": "revit/prune-trace/v1", "base_config": {...}, "target": ...,
"criterion": ..., "settings": {...}}``; every further line is one :class:`TraceStep`.  Steps are
appended (and flushed) as the run goes, so a killed run keeps what it did and can resume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revit._io import append_text, dumps_json, open_new_text
from revit.config import BlockDims, ViTConfig
from revit.errors import FileFormatError

SCHEMA = "revit/prune-trace/v1"


@dataclass(frozen=True)
class TraceStep:
    """The model's widths after one pruning step, with its estimated cost and loss."""

    step: int
    embed_dim: int
    blocks: tuple[BlockDims, ...]
    macs: int
    params: int
    latency: float | None = None  # estimated, seconds per batch of the table's batch size
    loss: float | None = None
    accuracy: float | None = None  # held-out top-1, when measured
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "step": self.step, "embed_dim": self.embed_dim, "blocks": [b.to_dict() for b in self.blocks],
            "latency": self.latency, "macs": int(self.macs), "params": int(self.params), "loss": self.loss,
            "accuracy": self.accuracy,
        }
        for k, v in self.extra.items():  # never over a known field (a pruner's cost entry "macs" is a float)
            d.setdefault(k, v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "trace step") -> TraceStep:
        try:
            known = {"step", "embed_dim", "blocks", "latency", "macs", "params", "loss", "accuracy"}
            return cls(
                step=int(d["step"]), embed_dim=int(d["embed_dim"]),
                blocks=tuple(BlockDims.from_dict(b, where) for b in d["blocks"]),
                macs=int(d["macs"]), params=int(d["params"]),
                latency=None if d.get("latency") is None else float(d["latency"]),
                loss=None if d.get("loss") is None else float(d["loss"]),
                accuracy=None if d.get("accuracy") is None else float(d["accuracy"]),
                extra={k: v for k, v in d.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FileFormatError(f"{where}: malformed step ({e})") from None

    def config(self, base: ViTConfig) -> ViTConfig:
        """The full ViT config at this step, with ``base``'s setting (image, classes, tokens)."""
        return base.with_blocks(self.blocks, embed_dim=self.embed_dim)

    def removed_parts(self, base: ViTConfig) -> dict[str, list[int]]:
        """The base's block indices whose attention or MLP pruning removed (the block still there), and the
        blocks it removed whole (a branch ``base`` lacks already is not counted)."""
        pairs = list(zip(base.blocks, self.blocks, strict=True))
        return {"attention": [i for i, (a, b) in enumerate(pairs) if a.has_attention and not b.has_attention
                              and not b.is_removed],
                "mlp": [i for i, (a, b) in enumerate(pairs) if a.has_mlp and not b.has_mlp and not b.is_removed],
                "blocks": [i for i, (_, b) in enumerate(pairs) if b.is_removed]}


@dataclass(frozen=True)
class Trace:
    """A whole trace: the header and the steps in order."""

    header: dict[str, Any]
    steps: tuple[TraceStep, ...]

    @property
    def base_config(self) -> ViTConfig:
        return ViTConfig.from_dict(self.header["base_config"], "trace header base_config")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trace:
        """Read a trace; a truncated last line (a run killed mid-write) is ignored."""
        from revit._io import check_depth, check_json_values, read_text

        p = Path(path)
        if p.is_dir():
            raise FileFormatError(f"{path}: is a folder, not a trace file (give its trace.jsonl)")
        lines = read_text(p).splitlines()  # size-limited; binary bytes are one line
        if not lines:
            raise FileFormatError(f"{path}: empty trace")
        check_json_values(lines[0], f"{path}: line 1")
        try:
            header = json.loads(lines[0])
            check_depth(header, f"{path}: line 1")
        except (ValueError, RecursionError):
            raise FileFormatError(f"{path}: line 1 is not a JSON trace header") from None
        if not isinstance(header, dict) or header.get("schema") != SCHEMA:
            raise FileFormatError(f"{path}: not a revit trace (schema {SCHEMA!r} expected on line 1)")
        steps = []
        for i, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            check_json_values(line, f"{path}: line {i}")
            try:
                d = json.loads(line)
                check_depth(d, f"{path}: line {i}")
            except (ValueError, RecursionError):
                if i == len(lines):
                    break  # torn last line from a kill
                raise FileFormatError(f"{path}: line {i} is not JSON") from None
            if not isinstance(d, dict):
                raise FileFormatError(f"{path}: line {i} is not a trace step")
            steps.append(TraceStep.from_dict(d, f"{path}: line {i}"))
        return cls(header=header, steps=tuple(steps))


def describe_removals(removed: Mapping[str, Sequence[int]]) -> str:
    """``block 2; the attention of blocks 0, 3; the MLP of block 1`` from :meth:`TraceStep.removed_parts`
    (block indices of the base model; empty when nothing was removed)."""
    parts = [f"{what}{'s' if len(ix) > 1 else ''} {', '.join(map(str, ix))}"
             for what, ix in (("block", removed.get("blocks", ())), ("the attention of block",
                                                                     removed.get("attention", ())),
                              ("the MLP of block", removed.get("mlp", ()))) if ix]
    return "; ".join(parts)


class TraceWriter:
    """Appends steps to a trace file, one flushed and fsynced JSON line each."""

    def __init__(self, path: str | os.PathLike[str], header: dict[str, Any] | None = None) -> None:
        """Open ``path``; with ``header`` a new file is started (an existing one is an error)."""
        self.path = Path(path)
        if header is not None:
            if self.path.exists() and self.path.stat().st_size > 0:
                raise FileFormatError(f"{path}: trace exists; resume it or choose another output")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open_new_text(self.path) as f:
                f.write(dumps_json({"schema": SCHEMA, **header}, "the trace header") + "\n")

    def append(self, step: TraceStep) -> None:
        """One line, never through a symlink (``O_NOFOLLOW``)."""
        append_text(self.path, dumps_json(step.to_dict(), "a trace step", nonfinite="null") + "\n", fsync=True)
