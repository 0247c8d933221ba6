"""Import NViT's official latency table (``latency_head.json``) into a revit table.

The official code (NVIT_SPEC.md section 3) reads the nested JSON ``EMB_e -> QK_h_q -> V_v -> MLP_m``
into a grid, prepends an ``EMB=0`` plane of zeros and uses the ``MLP=1`` entries as the ``MLP=0``
row, then interpolates multilinearly.  The import reproduces exactly that grid, so lookups equal
the official ones.  The imported table has no fixed parts: they are unknown, not zero.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from typing import Any

import numpy as np

from revit import __version__
from revit._io import load_json
from revit.errors import FileFormatError
from revit.input_checks import short
from revit.latency.table import LatencyTable

NVIT_BATCH = 256
NVIT_TOKENS = 198  # DeiT-B distilled at 224: 196 patches + cls + dist
_PAT = {"EMB": re.compile(r"^EMB_(\d+)$"), "QK": re.compile(r"^QK_(\d+)_(\d+)$"),
        "V": re.compile(r"^V_(\d+)$"), "MLP": re.compile(r"^MLP_(\d+)$")}


def _keys(d: Any, kind: str, where: str) -> dict[tuple[int, ...], Any]:
    if not isinstance(d, dict) or not d:
        raise FileFormatError(f"{where}: expected a non-empty mapping of {kind}_... keys")
    out: dict[tuple[int, ...], Any] = {}
    for k, v in d.items():
        m = _PAT[kind].match(str(k))
        if not m:
            raise FileFormatError(f"{where}: unexpected key {k!r} (expected {kind}_...)")
        out[tuple(int(g) for g in m.groups())] = v
    return out


def _cell(x: Any, where: str) -> float:
    """One latency of the table: a finite number >= 0 (a negative or NaN cell would predict nonsense)."""
    from revit.input_checks import check_number

    if isinstance(x, str):  # the official file stores numbers; a numeric string is read as the official code does
        try:
            x = float(x)
        except ValueError:
            raise FileFormatError(f"{where} must be a number, got {short(x)}") from None
    return float(check_number(x, where, 0, error=FileFormatError))


def import_nvit(path: str | os.PathLike[str]) -> LatencyTable:
    """Read NViT's ``latency_head.json`` and return the equivalent revit table (EMB=0 plane, MLP 1 -> 0)."""
    src = str(path)
    raw = load_json(path)
    emb = _keys(raw, "EMB", src)
    embs = sorted(e for (e,) in emb)
    first = emb[(embs[0],)]
    qk = _keys(first, "QK", src)
    heads = sorted({h for h, _ in qk})
    qks = sorted({q for _, q in qk})
    first_v = _keys(next(iter(qk.values())), "V", src)
    vs = sorted(v for (v,) in first_v)
    mlps = sorted(m for (m,) in _keys(next(iter(first_v.values())), "MLP", src))
    if mlps[0] != 1:
        raise FileFormatError(f"{src}: NViT's MLP axis starts at 1 (read as 0); got {mlps[0]}")
    grid = np.zeros((len(embs) + 1, len(heads), len(qks), len(vs), len(mlps)))
    try:
        for i, e in enumerate(embs):
            for j, h in enumerate(heads):
                for k, q in enumerate(qks):
                    for l_, v in enumerate(vs):
                        row = raw[f"EMB_{e}"][f"QK_{h}_{q}"][f"V_{v}"]
                        for m, mm in enumerate(mlps):
                            grid[i + 1, j, k, l_, m] = _cell(row[f"MLP_{mm}"],
                                                             f"{src}: EMB_{e}/QK_{h}_{q}/V_{v}/MLP_{mm}")
    except (KeyError, TypeError, ValueError) as e:
        raise FileFormatError(f"{src}: incomplete or malformed NViT table (missing or bad entry {e})") from None
    axes = {"embed_dim": [0, *embs], "heads": heads, "qk_dim": qks, "v_dim": vs, "mlp_dim": [0, *mlps[1:]]}
    metadata = {
        "device": "NVIDIA V100 (NViT official table)",
        "backend": "nvit-official",
        "backend_version": "unknown",
        "dtype": "unknown",
        "batch_size": NVIT_BATCH,
        "tokens": NVIT_TOKENS,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "revit_version": __version__,
        "measurement": {"statistic": "unknown", "warmup": None, "repeats": None},
        "imported_from": os.path.basename(src),
        "import_rule": "EMB=0 plane of zeros added; MLP=0 reads the MLP=1 values (official NViT code)",
    }
    return LatencyTable(axes, grid, metadata=metadata, spread=None, fixed=None,
                        fixed_note="imported NViT table: patch embedding and heads were never measured "
                                   "(unknown, not zero); totals cover the blocks only",
                        source=src)
