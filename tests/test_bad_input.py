"""Bad input, across every subcommand: exit 2, one stderr line, no traceback, no file created or touched.

A table of cases runs through the CLI entry point ``revit.cli.main.main(argv)`` in one shared folder
(cwd) holding every input file; each case checks the exit code, that stderr is exactly one
``revit: error: ...`` line naming the culprit, and that the folder's listing and every file's
checksum are unchanged (no database, journal, run folder or ``.tmp`` left behind).  Hypothesis draws
bad numbers for options and wrong-typed YAML values; a sample of cases runs in real subprocesses
(``python -m revit``); read-only and full disks are real tmpfs mounts when the tests run as root.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import fill_disk
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from revit.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "latency_tables" / "cpu_onnxruntime_fp32_bs64_t17.json"


# the shared folder -------------------------------------------------------------------------------
SPEC: dict[str, Any] = {
    "schema": "revit/study/v1", "kind": "study", "name": "bad", "setting": "micro", "budget": {"macs": "4M"},
    "space": {"family": "less-more-less", "params": {"plateau": [0.2, 1.0]}},
    "data": {"source": "digits", "train_limit": 200, "val_size": 50, "test_limit": 50, "img_size": 28},
    "train": {"epochs": 1, "batch_size": 64}, "baselines": [{"rule": "uniform"}],
}
SPACE: dict[str, Any] = {
    "schema": "revit/latency-space/v1", "name": "s", "depth": 4,
    "setting": {"img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10},
    "axes": {"embed_dim": {"min": 32, "max": 96, "step": 32}, "heads": [1, 2], "qk_dim": [4, 8], "v_dim": [4, 8],
             "mlp_dim": [8, 16]},
}
CONFIG: dict[str, Any] = {
    "schema": "revit/vit-config/v1", "embed_dim": 32, "img_size": 28, "patch_size": 7, "in_chans": 1,
    "num_classes": 10, "blocks": [{"heads": 2, "qk_dim": 8, "v_dim": 8, "mlp_dim": 64}] * 2,
}


def _nvit_table() -> dict[str, Any]:
    """A small table in NViT's own format (EMB_e / QK_h_q / V_v / MLP_m), every cell positive."""
    return {f"EMB_{e}": {f"QK_{h}_16": {f"V_{v}": {f"MLP_{m}": 1e-3 * (1 + e / 256 + h + v / 16 + m / 128)
                                                  for m in (1, 128)} for v in (16, 32)} for h in (1, 2)}
            for e in (256, 512)}


def _set(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``doc`` with ``a.b.c`` set to ``value``."""
    out = copy.deepcopy(doc)
    *path, last = dotted.split(".")
    d = out
    for k in path:
        d = d[k]
    d[last] = value
    return out


def _yaml(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def _table_with(cell: Any, where: str = "values") -> str:
    doc = json.loads(TABLE.read_text())
    if where == "values":
        doc["values"][0][0][0][0][0] = cell
    elif where == "spread":
        doc["spread"][1][0][1][0][2] = cell
    else:
        doc["fixed"]["values"][0] = cell
    return json.dumps(doc)


def _nvit_with(cell: Any) -> str:
    doc = _nvit_table()
    doc["EMB_512"]["QK_2_16"]["V_32"]["MLP_128"] = cell
    return json.dumps(doc)


FILES: dict[str, str] = {
    "spec.yaml": _yaml(SPEC),
    "space.yaml": _yaml(SPACE),
    "micro.yaml": _yaml(CONFIG),
    "table.json": TABLE.read_text(),
    "nvit.json": json.dumps(_nvit_table()),
    "existing.txt": "a file that is not a folder\n",
    "folder/keep.txt": "a folder that is not a file\n",
}


@dataclass(frozen=True)
class Case:
    """One bad input: the argv (relative to the shared folder), a needle stderr must hold, files it needs."""

    id: str
    argv: tuple[str, ...]
    needle: str = ""
    files: dict[str, str | bytes] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


CASES: list[Case] = []


def case(id: str, argv: list[str] | str, needle: str = "", files: dict[str, str | bytes] | None = None,
         env: dict[str, str] | None = None) -> None:
    argv = argv.split() if isinstance(argv, str) else argv
    CASES.append(Case(id, tuple(argv), needle, files or {}, env or {}))


# 1. every numeric option of every subcommand ----------------------------------------------------
COUNT = ["0", "-1", "abc", "1.5"]  # integers >= 1
NONNEG = ["-1", "x"]  # integers >= 0
POS = ["nan", "inf", "-1", "0", "1e400"]  # finite numbers > 0
NONNEG_F = ["nan", "-inf", "-0.5", "1e400"]  # finite numbers >= 0
FRACTION = ["0", "1", "1.5", "nan", "-0.1"]  # (0, 1)

# the other arguments of each base fail fast on their own (an output that is a file, a broken table, an
# impossible budget), so an option value wrongly accepted ends in a quick refusal, never in a real run
GEN = "generate --uniform --setting micro --macs 4M"
GEN_NO_TARGET = "generate --uniform --setting micro"
TRAIN = "train revit_micro --out existing.txt"
PRUNE = "prune --model revit_micro --target-macs 0.5 --out existing.txt"
PRUNE_NO_TARGET = "prune --model revit_micro --out existing.txt"
BUILD = "latency build --out folder"
VALIDATE = "latency validate table_negative.json"
SEARCH = "search run spec_budget-900T.yaml"
DEMO = "demo --out existing.txt"
OPTIONS: list[tuple[str, str, list[str]]] = [
    (GEN_NO_TARGET, "--macs", ["nan", "inf", "1e400", "-4M", "0", "lots", "-inf"]),
    (GEN_NO_TARGET, "--embed-dim", COUNT),
    (GEN_NO_TARGET, "--latency-ms", POS),
    (GEN, "--head-dim", COUNT),
    (GEN_NO_TARGET.replace("--uniform", "--rule paper") + " --embed-dim 64", "--mlp-factor", POS),
    (GEN, "--depth", COUNT),
    (GEN, "--img-size", COUNT),
    (GEN, "--patch-size", ["0", "-7"]),
    (GEN, "--in-chans", ["0", "three"]),
    (GEN, "--num-classes", NONNEG),
    (GEN, "--tolerance", POS),
    (GEN, "--max-embed-dim", ["0", "-2048"]),
    ("rules show paper", "--embed-dim", COUNT),
    ("rules show paper", "--depth", COUNT),
    ("rules fit --to-rule paper", "--depth", ["0", "-12"]),
    ("rules fit fixtures/t.jsonl", "--at-ratio", ["0", "1.5", "nan", "-0.1"]),
    ("rules fit fixtures/t.jsonl", "--at-latency-ratio", ["0", "inf"]),
    ("rules fit fixtures/t.jsonl", "--at-step", NONNEG),
    ("model export-onnx revit_micro --out folder", "--batch", [*COUNT, "4097"]),
    (TRAIN, "--threads", ["-1", "0", "many"]),
    (TRAIN, "--epochs", ["0", "-3", "2.5"]),
    (TRAIN, "--batch-size", ["0", "-128"]),
    (TRAIN, "--train-limit", ["0", "-5"]),
    (TRAIN, "--test-limit", ["0"]),
    (TRAIN, "--val-size", ["-1"]),
    (TRAIN, "--seed", ["-1"]),
    (TRAIN, "--grad-accum", ["0"]),
    (TRAIN, "--workers", ["-1"]),
    (TRAIN, "--lr", ["nan", "0", "-1e-3", "fast"]),
    (TRAIN, "--weight-decay", ["nan", "-0.05"]),
    (TRAIN, "--warmup-epochs", ["-1", "inf"]),
    (TRAIN, "--label-smoothing", ["1", "nan"]),
    (TRAIN, "--drop-path", ["1.5", "-0.1"]),
    (TRAIN, "--mixup", ["-0.8"]),
    (TRAIN, "--cutmix", ["nan"]),
    (TRAIN, "--model-ema-decay", ["1", "0"]),
    (TRAIN, "--distill-weight", ["-1"]),
    (TRAIN, "--temperature", ["0", "nan"]),
    (PRUNE, "--eta", ["nan", "inf", "-1", "1e400"]),
    (PRUNE_NO_TARGET, "--target-macs", FRACTION),
    (PRUNE_NO_TARGET, "--target-latency", ["0", "2"]),
    (PRUNE, "--threads", ["-1", "0"]),
    (PRUNE, "--epochs", ["0", "nan"]),
    (PRUNE, "--prune-steps", ["0"]),
    (PRUNE, "--interval", ["0"]),
    (PRUNE, "--per-step", ["0"]),
    (PRUNE, "--step-fraction", ["1", "0"]),
    (PRUNE, "--batch-size", ["0"]),
    (PRUNE, "--lr", ["0", "nan"]),
    (PRUNE, "--weight-decay", ["-1"]),
    (PRUNE, "--kl-weight", ["-1"]),
    (PRUNE, "--ce-weight", ["nan"]),
    (PRUNE, "--temperature", ["0"]),
    (PRUNE, "--eval-size", ["-1"]),
    (PRUNE, "--max-steps", ["0"]),
    (PRUNE, "--seed", ["-1"]),
    (PRUNE, "--workers", ["-1"]),
    (PRUNE, "--train-limit", ["0"]),
    (PRUNE, "--test-limit", ["-1"]),
    (DEMO, "--workers", ["0"]),
    (DEMO, "--threads", ["-1"]),
    (DEMO, "--epochs", ["0"]),
    (DEMO, "--candidates", ["-2"]),
    (DEMO, "--train-limit", ["0"]),
    (DEMO, "--study-train-limit", ["0"]),
    (DEMO, "--loader-workers", ["-1"]),
    (BUILD, "--batch", ["0", "-64"]),
    (BUILD, "--threads", ["-1"]),
    (BUILD, "--max-cells", ["0"]),
    (BUILD, "--tol", ["nan", "-1", "0", "inf"]),
    (BUILD, "--warmup", ["-1"]),
    (BUILD, "--repeats", ["0"]),
    (BUILD, "--passes", ["0"]),
    (BUILD, "--seed", ["-1"]),
    (VALIDATE, "--samples", ["0", "-1", "x"]),
    (VALIDATE, "--noise-k", ["-1"]),
    (VALIDATE, "--seed", ["-1"]),
    (SEARCH, "--threads", ["-1", "many"]),
    (SEARCH, "--n-trials", ["-1"]),
    (SEARCH, "--timeout", ["nan", "0", "-5"]),
    (SEARCH, "--loader-workers", ["-1"]),
    ("search worker spec.yaml --storage s.db", "--max-trials", ["0"]),
    ("search worker spec.yaml --storage s.db", "--threads", ["0"]),
]
GROUPS = ("model", "latency", "rules", "search")  # commands with subcommands
for base, opt, values in OPTIONS:
    words = base.split()
    for v in values:
        case(f"{'-'.join(words[:2]) if words[0] in GROUPS else words[0]}{opt}={v}", [*words, opt, v],
             opt)

# 2. numbers and types read from files ---------------------------------------------------------
SPEC_BAD: dict[str, tuple[str, Any, str]] = {
    "params-abc": ("space.params.plateau", ["abc", 1.0], "space.params.plateau"),
    "params-nan": ("space.params.plateau", [float("nan"), 1.0], "space.params.plateau"),
    "seeds-zero": ("seeds", ["zero"], "seeds"),
    "seeds-negative": ("seeds", [-1], "seeds"),
    "seeds-twice": ("seeds", [0, 0], "seeds"),
    "threads-many": ("threads", "many", "threads"),
    "threads-0": ("threads", 0, "threads"),
    "lr-fast": ("train.lr", "fast", "train.lr"),
    "lr-nan": ("train.lr", float("nan"), "lr"),
    "epochs-0": ("train.epochs", 0, "epochs"),
    "batch-1.5": ("train.batch_size", 1.5, "train.batch_size"),
    "train-limit-lots": ("data.train_limit", "lots", "data.train_limit"),
    "val-size-negative": ("data.val_size", -3, "val_size"),
    "heartbeat-soon": ("heartbeat_s", "soon", "heartbeat_s"),
    "heartbeat-inf": ("heartbeat_s", float("inf"), "heartbeat_s"),
    "grace-negative": ("grace_s", -1, "grace_s"),
    "n-trials-negative": ("n_trials", -1, "n_trials"),
    "top-k-many": ("repeats", {"top_k": "many"}, "repeats.top_k"),
    "mlp-factor-zero": ("space.mlp_factor", [0, 2], "space.mlp_factor"),
    "mlp-factor-text": ("space.mlp_factor", ["low", 2], "space.mlp_factor"),
    "baseline-param-abc": ("baselines", [{"rule": "uniform", "params": {"x": "abc"}}], "baselines"),
    "budget-900T": ("budget", {"macs": "900T"}, "cannot be met"),
    "budget-1K": ("budget", {"macs": "1K"}, "cannot be met"),
    "budget-nan": ("budget", {"macs": "nan"}, "finite"),
    "budget-inf": ("budget", {"macs": float("inf")}, "budget"),
    "budget-negative": ("budget", {"macs": -5}, "budget"),
    "budget-range-reversed": ("budget", {"macs": {"low": "8M", "high": "2M"}}, "low must be below high"),
    "data-nonexistent": ("data.source", "/nonexistent", "/nonexistent"),
    "setting-classes": ("setting", {"preset": "micro", "num_classes": 5}, "classes"),
    "setting-patch-0": ("setting", {"preset": "micro", "patch_size": 0}, "patch_size"),
    "data-8px": ("data.img_size", None, "8px"),
    "data-no-val": ("data.val_size", 0, "held-out"),
    "storage-int": ("storage", 5, "storage"),
    "baseline-unknown": ("baselines", ["nope"], "nope"),
    "base-unknown": ("space.base", "nope", "nope"),
    "budget-log-maybe": ("budget", {"macs": {"low": "2M", "high": "8M"}, "log": "maybe"}, "budget.log"),
    "description-list": ("description", [1], "description"),
    "family-unknown": ("space.family", "wiggly", "wiggly"),
    "param-unknown": ("space.params", {"wobble": [0, 1]}, "wobble"),
    "param-outside": ("space.params.plateau", [0.2, 9.0], "space.params.plateau"),
}
for cid, (key, value, needle) in SPEC_BAD.items():
    case(f"spec-{cid}", f"search run spec_{cid}.yaml", needle, {f"spec_{cid}.yaml": _yaml(_set(SPEC, key, value))})
# the list commands take a family name or nothing: an unknown family or option is one line
case("plugins-unknown-family", "plugins nope", "invalid choice: 'nope'")
case("plugins-unknown-option", "plugins criteria --bogus", "--bogus")
case("latency-backends-unknown-option", "latency backends --bogus", "--bogus")
case("spec-duplicate-key", "search run spec_dup.yaml", "given twice",
     {"spec_dup.yaml": _yaml(SPEC) + "threads: 1\nthreads: 2\n"})
case("worker-missing-sqlite", "search worker spec.yaml --storage missing.db", "no such study storage")
case("worker-missing-journal", "search worker spec.yaml --storage journal:missing.log", "no such study storage")
case("report-missing-sqlite", "search report spec.yaml --storage sqlite:///missing.db --out rep", "missing.db")
case("report-default-storage", "search report spec.yaml --out rep", "no such study storage")
case("status-missing-sqlite", "search status spec.yaml --storage missing.db", "no such study storage")

SPACE_BAD: dict[str, tuple[str, Any, str]] = {
    "img-size-text": ("setting.img_size", "28", "img_size"),
    "patch-size-0": ("setting.patch_size", 0, "patch_size"),
    "depth-four": ("depth", "four", "depth"),
    "embed-1e9": ("axes.embed_dim", {"min": 32, "max": 10**9, "step": 8}, "at most"),
    "embed-1e9-wide": ("axes.embed_dim", {"min": 10**8, "max": 10**9, "step": 10**8}, "memory"),
    "step-0": ("axes.heads", {"min": 1, "max": 4, "step": 0}, "step"),
    "min-negative": ("axes.qk_dim", {"min": -8, "max": 8}, "min"),
    "min-text": ("axes.v_dim", {"min": "four", "max": 8}, "min"),
    "list-text": ("axes.mlp_dim", ["8", "16"], "mlp_dim"),
    "setting-text": ("setting", "micro", "setting"),
    "depth-1e8": ("depth", 10**8, "fewer blocks"),
    "tokens-1e10": ("setting", {"img_size": 100000, "patch_size": 1, "in_chans": 1, "num_classes": 10}, "memory"),
}
for cid, (key, value, needle) in SPACE_BAD.items():
    case(f"space-{cid}", f"latency build --space space_{cid}.yaml --out t.json", needle,
         {f"space_{cid}.yaml": _yaml(_set(SPACE, key, value))})

for cid, cell, where in [("negative", -1e-3, "values"), ("nan", float("nan"), "values"),
                         ("spread-negative", -1.0, "spread"), ("fixed-negative", -1e-3, "fixed"),
                         ("fixed-nan", float("nan"), "fixed")]:
    name = f"table_{cid}.json"
    case(f"query-table-{cid}", f"latency query {name} revit_micro", "negative or non-finite",
         {name: _table_with(cell, where)})
    case(f"generate-table-{cid}", f"generate --rule paper --setting micro --latency-ms 5 --table {name}",
         "negative or non-finite", {name: _table_with(cell, where)})
case("query-table-duplicate-key", "latency query table_dup.json revit_micro", "given twice",
     {"table_dup.json": TABLE.read_text().replace('"fixed_note":', '"kind":"latency-table","fixed_note":', 1)})
case("validate-table-negative", "latency validate table_negative.json --samples 2", "negative or non-finite")
case("prune-table-negative", "prune --model revit_micro --target-macs 0.5 --out run --table table_negative.json",
     "negative or non-finite")
for cid, cell, needle in [("negative", -0.5, "must be >= 0"), ("nan", float("nan"), "must be a finite number"),
                          ("text", "abc", "must be a number"), ("null", None, "must be a number")]:
    case(f"import-nvit-{cid}", f"latency import-nvit nvit_{cid}.json --out imported.json",
         f"EMB_512/QK_2_16/V_32/MLP_128 {needle}",
         {f"nvit_{cid}.json": _nvit_with(cell)})

for cid, doc, needle in [
    ("embed-1e9", _set(CONFIG, "embed_dim", 10**9), "memory"),
    ("embed-text", _set(CONFIG, "embed_dim", "32"), "embed_dim"),
    ("heads-0", _set(CONFIG, "blocks", [{"heads": 0, "qk_dim": 8, "v_dim": 8, "mlp_dim": 64}]), "heads"),
    ("img-size-float", _set(CONFIG, "img_size", 28.0), "img_size"),
    ("patch-mismatch", _set(CONFIG, "patch_size", 5), "multiple"),
]:
    case(f"model-info-{cid}", f"model info cfg_{cid}.yaml", needle, {f"cfg_{cid}.yaml": _yaml(doc)})
# issue 30: a block may lack a branch, but a ViT keeps one block, and a head width needs heads
REMOVED_BLOCK = {"heads": 0, "qk_dim": 0, "v_dim": 0, "mlp_dim": 0}
for cid, blocks, needle in [
    ("depth-0", [], "depth 0"),
    ("all-removed", [REMOVED_BLOCK] * 2, "every block is removed"),
    ("heads-0-qk-64", [{"heads": 0, "qk_dim": 64, "v_dim": 0, "mlp_dim": 64}], "needs qk_dim 0 and v_dim 0"),
]:
    files = {f"cfg_i30_{cid}.yaml": _yaml(_set(CONFIG, "blocks", blocks))}
    case(f"i30-model-info-{cid}", f"model info cfg_i30_{cid}.yaml", needle, files)
    case(f"i30-export-{cid}", f"model export-onnx cfg_i30_{cid}.yaml --out m.onnx", needle, files)
    case(f"i30-prune-{cid}", f"prune --model cfg_i30_{cid}.yaml --data digits --target-macs 0.5 --out run", needle,
         files)
# issue 30 item 2: --keep-depth with a target that only removing branches or blocks can reach
case("i30-prune-keep-depth-unreachable", "prune --model revit_micro --data digits --target-macs 0.1 --granularity "
     "48,2,12,12,192 --keep-depth --out run", "cannot be reached without removing a branch or a block (keep_depth)")
# a model already without attention, pruned under a v1 table (which cannot price it): one line, no warning first
case("i30-prune-absent-branch-v1-table", "prune --model cfg_i30_noattn.yaml --data digits --target-latency 0.5 "
     f"--table {ROOT / 'tests' / 'fixtures' / 'cost_target' / 'cpu_onnxruntime_fp32_bs64_t17_v1_amd.json'} --out run",
     "cannot price a block with heads 0",
     {"cfg_i30_noattn.yaml": _yaml(_set(CONFIG, "blocks", [{"heads": 0, "mlp_dim": 64}, *CONFIG["blocks"][:1]]))})
# the weights of a 3-block model (written by the ws fixture) into the 2-block micro.yaml
case("i30-export-deeper-checkpoint", "model export-onnx micro.yaml --checkpoint deep3.safetensors --out m.onnx",
     "the checkpoint has 3 blocks, the config 2")
case("i30-save-deeper-checkpoint", "model save micro.yaml --checkpoint deep3.safetensors --out m",
     "the checkpoint has 3 blocks, the config 2")
# issue 30 item 3: a depth or depth range that the rule cannot make, or that meets no budget
CAPPED_RULE = {"schema": "revit/rule/v1", "kind": "rule", "name": "capped", "family": "uniform", "max_depth": 8,
               "params": {"mlp_ratio": 4}}
for cid, args, needle in [
    ("range-unreachable", "--macs 10K --depth 2:5", "no depth in 2..5 meets"),
    ("range-unreachable-above", "--macs 900T --depth 2:5", "no depth in 2..5 meets"),
    ("range-0", "--macs 4M --depth 0:4", "--depth"),
    ("range-reversed", "--macs 4M --depth 5:2", "--depth"),
    ("range-text", "--macs 4M --depth 2:x", "--depth"),
    ("range-with-embed-dim", "--embed-dim 64 --depth 2:4", "--depth LOW:HIGH"),
]:
    case(f"i30-generate-depth-{cid}", f"{GEN_NO_TARGET} {args}", needle)
for cid, cmd, needle in [
    ("generate-depth", "generate --rule capped.yaml --setting micro --macs 4M --depth 9", "limit of 8 blocks"),
    ("generate-range", "generate --rule capped.yaml --setting micro --macs 4M --depth 4:12", "limit of 8 blocks"),
    ("generate-setting", "generate --rule capped.yaml --macs 1G", "the setting's depth 12 is above the limit of 8"),
    ("generate-embed", "generate --rule capped.yaml --setting micro --embed-dim 64 --depth 9", "limit of 8 blocks"),
    ("rules-show", "rules show capped.yaml --depth 9", "limit of 8 blocks"),
]:
    case(f"i30-max-depth-{cid}", cmd, needle, {"capped.yaml": _yaml(CAPPED_RULE)})
for cid, value in [("0", 0), ("text", "eight"), ("bool", True)]:
    case(f"i30-rule-max-depth-{cid}", f"generate --rule capped_{cid}.yaml --setting micro --macs 4M", "'max_depth'",
         {f"capped_{cid}.yaml": _yaml({**CAPPED_RULE, "max_depth": value})})
case("config-duplicate-key", "model info cfg_dup.yaml", "given twice",
     {"cfg_dup.yaml": _yaml(CONFIG) + "embed_dim: 64\n"})
case("generate-embed-1e9", "generate --uniform --setting micro --embed-dim 1000000000", "memory")
case("generate-embed-1e6", "generate --rule paper --embed-dim 1000000", "memory")
case("train-config-embed-1e9", "train cfg_embed-1e9.yaml --out run", "memory")
case("export-config-embed-1e9", "model export-onnx cfg_embed-1e9.yaml --out m.onnx", "memory")
case("generate-depth-1e8", f"{GEN_NO_TARGET} --embed-dim 64 --depth 100000000", "fewer blocks")
case("rules-show-depth-1e8", "rules show paper --depth 100000000", "fewer blocks")
case("generate-factor-range-nan", f"{GEN} --mlp-factor-range nan,2", "--mlp-factor-range")
case("generate-factor-range-reversed", f"{GEN} --mlp-factor-range 2,0.5", "--mlp-factor-range")
case("rules-fit-fix-nan", "rules fit --to-rule paper --fix v_end=nan", "--fix v_end")
case("rules-fit-embed-dims", "rules fit --to-rule paper --embed-dims 192,-1", "--embed-dims")

# 3. outputs, runs and settings that cannot work ----------------------------------------------
case("generate-out-dir", f"{GEN} --out folder", "folder")
case("generate-out-under-file", f"{GEN} --out existing.txt/cfg.yaml", "not a directory")
case("generate-out-trailing-slash", f"{GEN} --out newdir/", "is a directory")
case("rules-fit-out-dir", "rules fit --to-rule paper --no-plot --out folder", "folder")
case("rules-fit-plot-dir", "rules fit --to-rule paper --out r.yaml --plot folder", "--plot")
case("query-out-dir", "latency query table.json revit_micro --out folder", "folder")
case("query-out-under-file", "latency query table.json revit_micro --json --out existing.txt/q.json", "existing.txt")
case("import-nvit-out-dir", "latency import-nvit nvit.json --out folder", "folder")
case("build-out-dir", "latency build --space space.yaml --out folder", "folder")
case("build-full-design-cells", "latency build --space space.yaml --out t.json --design full --max-cells 10",
     "--max-cells")
case("export-out-dir", "model export-onnx revit_micro --out folder", "folder")
case("convert-out-file", "model convert vit_tiny_patch16_224 --out existing.txt", "existing.txt")
case("train-out-file", "train revit_micro --out existing.txt", "existing.txt")
case("prune-out-file", "prune --model revit_micro --target-macs 0.5 --out existing.txt", "existing.txt")
case("demo-out-file", "demo --out existing.txt", "existing.txt")
case("report-out-file", "search report spec.yaml --out existing.txt", "existing.txt")
case("train-teacher-no-weights", f"{TRAIN} --teacher revit_micro", "--teacher-weights")
case("train-teacher-weights-alone", f"{TRAIN} --teacher-weights w.safetensors", "--teacher")
case("train-teacher-both", f"{TRAIN} --teacher revit_micro --teacher-weights w --teacher-random-init", "not both")
case("convert-pickled-module", "model convert vit_tiny_patch16_224 --checkpoint module.pth --out conv", "module.pth")
case("convert-missing-checkpoint", "model convert vit_tiny_patch16_224 --checkpoint nope.pth --out conv", "nope.pth")
case("convert-unknown-model", "model convert vit_wobbly --out conv", "vit_wobbly")
case("convert-pretrained-offline", "model convert vit_tiny_patch16_224 --pretrained --out conv", "HF_HUB_OFFLINE",
     env={"HF_HUB_OFFLINE": "1"})
case("generate-macs-unreachable", f"{GEN_NO_TARGET} --macs 900T", "above the largest")
case("rules-show-unknown", "rules show wiggly", "wiggly")
case("query-missing-table", "latency query nope.json revit_micro", "nope.json")
case("demo-table-negative", "demo --out d --table table_negative.json", "negative or non-finite")
case("build-batch-huge", "latency build --preset micro --out t.json --batch 1000000000", "--batch")
case("build-batch-memory", "latency build --preset deit --out t.json --batch 65536", "memory")
case("train-threads-dashdash", f"{TRAIN} --threads=--", "--threads")  # argparse alone would store []
case("prune-eta-dashdash", f"{PRUNE} --eta=--", "--eta")
case("prune-latency-no-table", "prune --model revit_micro --target-latency 0.5 --out run", "--table")
case("save-out-other-folder", "model save micro.yaml --out folder", "folder")
case("save-out-file", "model save micro.yaml --out existing.txt", "existing.txt")
case("save-no-run", "model save folder --out m", "folder")
case("save-missing-config", "model save nope.yaml --out m", "nope.yaml")
case("save-missing-table", "model save micro.yaml --out m --table nope.json", "nope.json")
case("save-run-with-checkpoint", "model save folder --checkpoint w.safetensors --out m", "--checkpoint")

# 4. issue 21: the hostile round, one block per numbered class ------------------------------------
RUN_MARKER = json.dumps({"schema": "revit/run/v1", "kind": "{kind}", "created": "2026-01-01T00:00:00+00:00",
                         "finished": False, "revit_version": "0"})
# (1) ownership: files that once made a folder count as an old-style run; --overwrite/--resume refuse, naming them
USER_DIR = {"mine/results.csv": "a,b\n1,2\n", "mine/trace.jsonl": "{}\n", "mine/metrics.json": "{}",
            "mine/log.jsonl": "{}\n", "mine/history.json": "[]", "mine/src/main.py": "print(1)\n"}
case("i21-1-prune-overwrite-user-folder", f"{PRUNE_NO_TARGET.replace('existing.txt', 'mine')} --target-macs 0.5 "
     "--overwrite", "results.csv", USER_DIR)
case("i21-1-train-overwrite-user-folder", "train revit_micro --out mine --overwrite", "results.csv", USER_DIR)
case("i21-1-train-resume-user-folder", "train revit_micro --out mine --resume", "results.csv", USER_DIR)
case("i21-1-demo-user-folder", "demo --quick --out mine", "results.csv", USER_DIR)
# (2) code from a file: a pickle that would create PWNED (planted by the ws fixture), in state files and inputs
case("i21-2-train-resume-payload", "train revit_micro --data digits --out pl_train --resume", "checkpoint.pt",
     {"pl_train/.revit-run.json": RUN_MARKER.replace("{kind}", "train")})
case("i21-2-prune-resume-payload", "prune --model revit_micro --data digits --target-macs 0.5 --out pl_prune "
     "--resume", "state.pt", {"pl_prune/.revit-run.json": RUN_MARKER.replace("{kind}", "prune")})
case("i21-2-convert-payload", "model convert vit_tiny_patch16_224 --checkpoint payload.pth --out conv", "payload.pth")
case("i21-2-init-payload", "train revit_micro --data digits --init payload.pth --out run", "payload.pth")
case("i21-2-build-journal-payload", "latency build --preset micro --out pl.json --resume", "pl.json.journal.jsonl")
# (3) bounds: huge numbers in options (10**30, 400 and 5000 digits, 1e308), files past their limits
HUGE = {"1e30": str(10**30), "400-digits": "9" * 400, "5000-digits": "7" * 5000}
for base, opt in [(DEMO, "--workers"), (DEMO, "--candidates"), (DEMO, "--epochs"), (DEMO, "--threads"),
                  (DEMO, "--loader-workers"), (TRAIN, "--workers"), (TRAIN, "--epochs"), (TRAIN, "--seed"),
                  (TRAIN, "--threads"), (TRAIN, "--batch-size"), (TRAIN, "--grad-accum"), (PRUNE, "--seed"),
                  (PRUNE, "--threads"), (PRUNE, "--workers"), (BUILD, "--threads"), (BUILD, "--repeats"),
                  (BUILD, "--seed"), (VALIDATE, "--samples"), ("rules fit fixtures/t.jsonl", "--bootstrap"),
                  ("rules fit fixtures/t.jsonl", "--seed"), (GEN, "--max-embed-dim"), (SEARCH, "--threads")]:
    words = base.split()
    for label, v in HUGE.items():
        case(f"i21-3-{'-'.join(words[:2]) if words[0] in GROUPS else words[0]}{opt}-{label}", [*words, opt, v], opt)
for base, opt in [(TRAIN, "--lr"), (PRUNE, "--lr"), (GEN_NO_TARGET.replace("--uniform", "--rule paper") +
                                                       " --embed-dim 64", "--mlp-factor")]:
    case(f"i21-3-{base.split()[0]}{opt}-1e308", [*base.split(), opt, "1e308"], opt)
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
DEEP_YAML = "[" * 5000 + "]" * 5000 + "\n"
DEEP_JSON = "[" * 5000 + "]" * 5000
for where, argv, name in [("config", "model info {f}", "cfg"), ("spec", "search run {f}", "spec"),
                          ("space", "latency build --space {f} --out t.json", "space"),
                          ("rule", "rules show {f}", "rule")]:
    case(f"i21-3-alias-bomb-{where}", argv.format(f=f"bomb_{name}.yaml"), "YAML nodes", {f"bomb_{name}.yaml": BOMB})
    case(f"i21-3-complex-key-{where}", argv.format(f=f"ck_{name}.yaml"), "a key must be",
         {f"ck_{name}.yaml": "? [a]\n: 1\nschema: x\n"})
    case(f"i21-3-flow-complex-key-{where}", argv.format(f=f"fk_{name}.yaml"), "a key must be",
         {f"fk_{name}.yaml": "{[1, 2]: 3}\n"})
    case(f"i21-3-deep-yaml-{where}", argv.format(f=f"deep_{name}.yaml"), f"deep_{name}.yaml",
         {f"deep_{name}.yaml": DEEP_YAML})
case("i21-3-deep-json-table", "latency query deep_table.json revit_micro", "nested", {"deep_table.json": DEEP_JSON})
case("i21-3-deep-json-nvit", "latency import-nvit deep_nvit.json --out x.json", "nested",
     {"deep_nvit.json": DEEP_JSON})
case("i21-3-deep-json-trace", "rules fit deep_trace.jsonl", "deep_trace.jsonl", {"deep_trace.jsonl": DEEP_JSON})
_DEEP = json.loads(TABLE.read_text())
for _ in range(200):
    _DEEP["values"] = [_DEEP["values"]]
case("i21-3-deep-table-values", "latency query deep_values.json revit_micro", "nested",
     {"deep_values.json": json.dumps(_DEEP)})
case("i21-3-binary-trace", "rules fit binary.jsonl", "not a UTF-8", {"binary.jsonl": b"\x80\x81\xfe\xff" * 64})
case("i21-3-binary-config", "model info binary.yaml", "not a UTF-8", {"binary.yaml": b"\xff\xfe\x00" * 40})
case("i21-3-long-value-quoted-short", "model info long.yaml", "embed_dim",
     {"long.yaml": _yaml(_set(CONFIG, "embed_dim", "x" * 100_000))})


# (4) tables validated whole on load: NaN, Infinity, negative and string knots, string cells
def _table_axis(axis: str, i: int, value: Any) -> str:
    doc = json.loads(TABLE.read_text())
    doc["axes"][axis][i] = value
    return json.dumps(doc)


KNOTS = {"nan-knot": ("embed_dim", 1, float("nan"), "knot 1"), "inf-knot": ("embed_dim", 2, float("inf"), "knot 2"),
         "negative-knot": ("heads", 0, -1, "knot 0"), "string-knot": ("mlp_dim", 3, "56", "knot 3"),
         "bool-knot": ("qk_dim", 0, True, "knot 0"), "unsorted-knot": ("mlp_dim", 2, 10, "strictly increasing")}
for cid, (axis, i, v, needle) in KNOTS.items():
    name = f"table_{cid}.json"
    files = {name: _table_axis(axis, i, v)}
    case(f"i21-4-query-{cid}", f"latency query {name} revit_micro", needle, files)
    case(f"i21-4-generate-{cid}", f"generate --rule paper --setting micro --latency-ms 5 --table {name}", needle, files)
    case(f"i21-4-validate-{cid}", f"latency validate {name} --samples 2", needle, files)
    case(f"i21-4-demo-{cid}", f"demo --quick --out d --table {name}", needle, files)
case("i21-4-string-cell", "latency query table_string_cell.json revit_micro", "not a regular array of numbers",
     {"table_string_cell.json": _table_with("0.001")})
case("i21-4-null-cell", "latency query table_null_cell.json revit_micro", "not a regular array of numbers",
     {"table_null_cell.json": _table_with(None)})
_FIXED = json.loads(TABLE.read_text())
_FIXED["fixed"]["embed_dim"][0] = "32"
case("i21-4-fixed-string-knot", "latency query table_fixed_knot.json revit_micro", "embed_dim knot 0",
     {"table_fixed_knot.json": json.dumps(_FIXED)})
case("i21-4-nvit-deep-cell", "latency import-nvit nvit_list_cell.json --out imported.json", "MLP_128",
     {"nvit_list_cell.json": _nvit_with([[1e-3]])})
# (6) refusals leave nothing behind, and name the real cause
_T197 = json.loads(TABLE.read_text())
_T197["metadata"]["tokens"] = 197
case("i21-6-demo-table-tokens", "demo --quick --out d --table table_t197.json", "197 tokens",
     {"table_t197.json": json.dumps(_T197)})
case("i21-6-train-grad-accum-too-big", "train revit_micro --data digits --train-limit 64 --val-size 16 --test-limit 16 "
     "--grad-accum 2147483647 --out run", "optimizer step")
case("i21-6-rules-fit-folder", "rules fit folder", "is a folder")

# 5. issue 27: bounds on counts read from files, a JSON value limit, finite outputs ----------------------
def _table_meta(**changes: Any) -> str:
    """The shipped table with ``metadata`` entries changed (a dotted key reaches inside: ``measurement.repeats``)."""
    doc = json.loads(TABLE.read_text())
    for key, value in changes.items():
        doc = _set(doc, "metadata." + key.replace("__", "."), value)
    return json.dumps(doc)


# (8) every count of a table's metadata is bounded: 10**30 was a numpy traceback, 200000 a 3.9 GB allocation
TABLE_COUNTS = {"batch-1e30": ({"batch_size": 10**30}, "metadata batch_size"),
                "batch-200000": ({"batch_size": 200_000}, "metadata batch_size"),
                "batch-text": ({"batch_size": "64"}, "metadata batch_size"),
                "tokens-1e30": ({"tokens": 10**30}, "metadata tokens"),
                "tokens-other": ({"tokens": 10**6}, "metadata tokens"),
                "repeats-1e30": ({"measurement__repeats": 10**30}, "measurement.repeats"),
                "warmup-negative": ({"measurement__warmup": -1}, "measurement.warmup"),
                "reference-wide": ({"measurement__reference__cell__embed_dim": 10**9}, "reference.cell.embed_dim"),
                "reference-runs": ({"measurement__reference__runs": 10**12}, "reference.runs"),
                "space-depth-1e8": ({"space__depth": 10**8}, "blocks"),
                "space-axis-text": ({"space__axes__heads": "four"}, "metadata.space"),
                "space-setting-list": ({"space__setting": [1]}, "metadata.space")}
for cid, (changes, needle) in TABLE_COUNTS.items():
    name = f"table_meta_{cid}.json"
    files = {name: _table_meta(**changes)}
    case(f"i27-8-validate-{cid}", f"latency validate {name} --samples 2", needle, files)
    if not cid.startswith(("space", "tokens-other")):  # query reads no space, and tokens only to compare
        case(f"i27-8-query-{cid}", f"latency query {name} revit_micro", needle, files)
# latency calibrate: a table read through the same layer; what it must not write is refused before timing
case("calibrate-table-batch", "latency calibrate table_meta_batch-1e30.json", "batch",
     {"table_meta_batch-1e30.json": _table_meta(batch_size=10**30)})
case("calibrate-shipped-by-name", "latency calibrate cpu_onnxruntime_fp32_bs64_t17", "--out")
case("calibrate-models-0", "latency calibrate cpu_onnxruntime_fp32_bs64_t17 --out c.json --models 0", "--models")
case("calibrate-out-not-a-table", "latency calibrate cpu_onnxruntime_fp32_bs64_t17 --out notes.txt --overwrite",
     "notes.txt", {"notes.txt": "mine"})
# latency smooth: a new file or a table with --overwrite; a strength >= 0; never a table smoothed already
case("smooth-no-out", "latency smooth cpu_onnxruntime_fp32_bs64_t17", "--out")
case("smooth-lambda-negative", "latency smooth cpu_onnxruntime_fp32_bs64_t17 --out s.json --lambda -1", "--lambda")
case("smooth-out-not-a-table", "latency smooth cpu_onnxruntime_fp32_bs64_t17 --out notes.txt --overwrite",
     "notes.txt", {"notes.txt": "mine"})
# latency align: where it writes, the axes it probes and the counts, refused before anything is exported or timed
case("align-shipped-by-name", "latency align cpu_onnxruntime_fp32_bs64_t17", "--out")
case("align-axes-heads", "latency align cpu_onnxruntime_fp32_bs64_t17 --out a.json --axes heads", "--axes")
case("align-axes-empty", "latency align cpu_onnxruntime_fp32_bs64_t17 --out a.json --axes ,", "--axes")
case("align-widths-0", "latency align cpu_onnxruntime_fp32_bs64_t17 --out a.json --widths 0", "--widths")
case("align-out-not-a-table", "latency align cpu_onnxruntime_fp32_bs64_t17 --out notes.txt --overwrite",
     "notes.txt", {"notes.txt": "mine"})
# latency transfer and room (issue 26 items 4, 5): refused before anything is timed or written
SHIPPED_T = "cpu_onnxruntime_fp32_bs64_t17"
case("transfer-configs-11", f"latency transfer {SHIPPED_T} --threads 2 --configs 11 --out t.json", "at most 10")


def _this_machines_table() -> str:
    """The shipped table as if built on this machine: its own setting here is no transfer (on another device it is)."""
    from revit.latency.accuracy import backend_for_table
    from revit.latency.table import LatencyTable, resolve_table

    path = resolve_table(SHIPPED_T)
    doc = json.loads(path.read_text())
    doc["metadata"]["device"] = backend_for_table(LatencyTable.load(path)).info()["device"]
    return json.dumps(doc)


HERE_T = {"here.json": _this_machines_table()}
case("transfer-configs-below-params", f"latency transfer {SHIPPED_T} --threads 2 --configs 2 --out t.json",
     "4 parameters")
case("transfer-same-setting", "latency transfer here.json --threads 1 --batch 64 --out t.json",
     "is the table's own", HERE_T)
case("transfer-no-setting", "latency transfer here.json --out t.json", "--batch or --threads", HERE_T)
case("transfer-out-not-a-table", f"latency transfer {SHIPPED_T} --threads 2 --out notes.txt --overwrite",
     "notes.txt", {"notes.txt": "mine"})
case("transfer-evaluate-missing", f"latency transfer {SHIPPED_T} --threads 2 --out t.json --evaluate full.json",
     "full.json")
case("transfer-threads-0", f"latency transfer {SHIPPED_T} --threads 0 --out t.json", "--threads")
case("room-groups-0", f"latency room {SHIPPED_T} --groups 0", "--groups")
case("room-table-negative", "latency room table_negative.json", "table_negative.json")
case("i27-8-validate-memory", "latency validate table_meta_batch-60000.json --samples 100000", "memory",
     {"table_meta_batch-60000.json": _table_meta(batch_size=60_000)})
# (9) the JSON reader counts values before it builds them, in every reader (tables, markers, traces, journals)
MANY = "[" + "0," * 1_000_000 + "0]"  # 1,000,001 values in 2 MB
case("i27-9-json-values-table", "latency query many.json revit_micro", "JSON values", {"many.json": MANY})
case("i27-9-json-values-nvit", "latency import-nvit many.json --out x.json", "JSON values")
case("i27-9-json-values-trace", "rules fit many.json", "JSON values")
case("i27-9-json-values-marker", "train revit_micro --data digits --out many_run --resume", "JSON values",
     {"many_run/.revit-run.json": MANY})
case("i27-9-json-values-journal", "latency build --preset micro --out many_build.json --resume", "JSON values",
     {"many_build.json.journal.jsonl": MANY + "\n{}\n"})
# (11, 15) cells are finite and at most an hour, so every prediction is finite: 1.7e308 printed "inf ms"
for cid, cell, where in [("cell-1.7e308", 1.7e308, "values"), ("cell-1e6", 1e6, "values"),
                         ("spread-1e300", 1e300, "spread"), ("fixed-1.7e308", 1.7e308, "fixed")]:
    name = f"table_{cid}.json"
    files = {name: _table_with(cell, where)}
    case(f"i27-11-query-{cid}", f"latency query {name} revit_micro", "more than the 3600 s", files)
    case(f"i27-15-query-json-{cid}", f"latency query {name} revit_micro --json", "more than the 3600 s", files)
    case(f"i27-11-validate-{cid}", f"latency validate {name} --samples 2", "more than the 3600 s", files)
    case(f"i27-11-generate-{cid}", f"generate --rule paper --setting micro --latency-ms 5 --table {name}",
         "more than the 3600 s", files)
case("i27-11-import-nvit-1e300", "latency import-nvit nvit_1e300.json --out imported.json", "more than the 3600 s",
     {"nvit_1e300.json": _nvit_with(1e300)})

CASE_IDS = [c.id for c in CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS), "case ids must be unique"


# the unmutated inputs are valid: every refusal above comes from its one bad value -------------
def test_base_inputs_are_valid(ws: Path) -> None:
    from revit.config import ViTConfig
    from revit.latency.grid import WidthGrid
    from revit.latency.nvit import import_nvit
    from revit.latency.table import LatencyTable
    from revit.search.checks import check_study
    from revit.search.spec import load_spec

    check_study(load_spec(str(ws / "spec.yaml")))  # budget reachable, data loads and fits the setting
    WidthGrid.load(ws / "space.yaml")
    LatencyTable.load(ws / "table.json")
    assert import_nvit(ws / "nvit.json").n_cells == 3 * 2 * 1 * 2 * 2
    assert ViTConfig.load(ws / "micro.yaml").embed_dim == 32


# machinery -------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (hidden ones too) with the sha256 of its bytes ('dir' for folders)."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared folder: every case's input files, a trace for ``rules fit``."""
    root = tmp_path_factory.mktemp("bad_input")
    files = dict(FILES)
    for c in CASES:
        files.update(c.files)
    files["fixtures/t.jsonl"] = (ROOT / "tests" / "fixtures" / "micro_prune_trace.jsonl").read_text()
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            (root / name).write_bytes(text)
        else:
            (root / name).write_text(text)
    import torch

    torch.save(torch.nn.Linear(2, 2), root / "module.pth")  # a pickled nn.Module, not a state dict
    from revit.config import ViTConfig
    from revit.models import build_model
    from revit.models.checkpoint import save_weights

    deep = ViTConfig.from_dict(_set(CONFIG, "blocks", CONFIG["blocks"] + CONFIG["blocks"][:1]))
    save_weights(build_model(deep), root / "deep3.safetensors")  # issue 30: deeper than micro.yaml
    from test_payloads import plant  # issue 21: a pickle that would create PWNED when loaded unsafely

    for f in ("payload.pth", "pl_train/checkpoint.pt", "pl_prune/state.pt", "pl.json.journal.jsonl"):
        plant(root / f, root / "PWNED", pruner={}, settings={}, base_config={})
    return root


def assert_refused(rc: int, out: str, err: str, needle: str) -> None:
    """Exit 2, exactly one plain ``revit: error:`` line on stderr naming ``needle``, no traceback."""
    assert rc == 2, f"exit {rc}; stderr: {err!r}"
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith("revit: error: "), err
    assert "Traceback" not in err and "\x1b" not in err, err
    assert needle in err, f"{needle!r} not in {err!r}"
    assert len(err) < 2000, f"a {len(err)}-character line: messages quote only a short prefix of a value"


def run_in(ws: Path, argv: list[str] | tuple[str, ...], capsys: pytest.CaptureFixture[str],
           monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    monkeypatch.chdir(ws)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_bad_input(c: Case, ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(ws)
    rc, out, err = run_in(ws, c.argv, capsys, monkeypatch, c.env)
    assert_refused(rc, out, err, c.needle)
    assert snapshot(ws) == before, "a refused command created, changed or removed a file"


def test_case_count_and_coverage() -> None:
    """At least 150 cases, and every subcommand is among them."""
    from revit.cli.main import build_parser

    assert len(CASES) >= 150
    subs = set()
    parser = build_parser()
    for name, p in parser._subparsers._group_actions[0].choices.items():  # type: ignore[union-attr]
        inner = [a for a in p._actions if a.__class__.__name__ == "_SubParsersAction"]
        subs |= {f"{name} {s}" for s in inner[0].choices} if inner else {name}
    seen = {" ".join(c.argv[:2]) if c.argv[0] in GROUPS else c.argv[0] for c in CASES}
    missing = {s for s in subs if s not in seen and s != "rules list"}  # `rules list` takes no input
    assert not missing, f"subcommands without a bad-input case: {sorted(missing)}"


# hypothesis: bad numbers for options, wrong-typed YAML values -----------------------------------
BAD_FLOATS = st.one_of(
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "-1e400", "infinity"]),
    st.floats(max_value=-1e-6, allow_nan=False, allow_infinity=False).map(repr),
    st.text(alphabet="abcxyz,;_", min_size=1, max_size=6),
)
NON_NEGATIVE_FLOAT_OPTIONS = [(PRUNE, "--eta"), (TRAIN, "--weight-decay"), (TRAIN, "--mixup"),
                              (PRUNE, "--kl-weight"), (BUILD, "--tol"), (SEARCH, "--timeout"),
                              (TRAIN, "--lr"), (GEN_NO_TARGET, "--latency-ms"), (PRUNE, "--lr")]
BAD_INTS = st.one_of(st.integers(max_value=0).map(str), st.floats(allow_nan=True).map(repr),
                     st.text(alphabet="abc.-", min_size=1, max_size=4), st.just("--"))
COUNT_OPTIONS = [(TRAIN, "--threads"), (PRUNE, "--threads"), (VALIDATE, "--samples"),
                 ("model export-onnx revit_micro --out folder", "--batch"), ("rules show paper", "--depth"),
                 (GEN_NO_TARGET, "--embed-dim"), (BUILD, "--max-cells"), (TRAIN, "--epochs")]
HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@HYP
@given(opt=st.sampled_from(NON_NEGATIVE_FLOAT_OPTIONS), value=BAD_FLOATS)
def test_bad_float_options(opt: tuple[str, str], value: str, ws: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    base, flag = opt
    rc, out, err = run_in(ws, [*base.split(), f"{flag}={value}"], capsys, monkeypatch)
    assert_refused(rc, out, err, f"argument {flag}")


@HYP
@given(opt=st.sampled_from(COUNT_OPTIONS), value=BAD_INTS)
def test_bad_count_options(opt: tuple[str, str], value: str, ws: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    base, flag = opt
    rc, out, err = run_in(ws, [*base.split(), f"{flag}={value}"], capsys, monkeypatch)
    assert_refused(rc, out, err, f"argument {flag}")


WRONG_TYPED = st.one_of(st.text(min_size=1, max_size=8), st.booleans(), st.lists(st.integers(), max_size=2),
                        st.dictionaries(st.sampled_from("ab"), st.integers(), min_size=1, max_size=1))
SPEC_NUMERIC_KEYS = ["threads", "heartbeat_s", "grace_s", "n_trials", "train.lr", "train.epochs",
                     "train.batch_size", "train.weight_decay", "data.train_limit", "data.val_size"]


@HYP
@given(key=st.sampled_from(SPEC_NUMERIC_KEYS), value=WRONG_TYPED)
@example(key="n_trials", value="\x1b")  # found by CI (2026-12-08): a lone ESC was echoed raw into the error line
def test_spec_values_of_the_wrong_type(key: str, value: Any, tmp_path_factory: pytest.TempPathFactory,
                                       capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path_factory.mktemp("spec")
    (d / "s.yaml").write_text(_yaml(_set(SPEC, key, value)))
    before = snapshot(d)
    rc, out, err = run_in(d, ["search", "run", "s.yaml"], capsys, monkeypatch)
    assert_refused(rc, out, err, key.split(".")[-1])
    assert snapshot(d) == before


@HYP
@given(key=st.sampled_from(["setting.img_size", "setting.patch_size", "depth", "setting.in_chans"]),
       value=st.one_of(st.text(max_size=4), st.integers(max_value=0), st.floats(), st.booleans()))
def test_space_values_of_the_wrong_type(key: str, value: Any, tmp_path_factory: pytest.TempPathFactory,
                                        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path_factory.mktemp("space")
    (d / "s.yaml").write_text(_yaml(_set(SPACE, key, value)))
    before = snapshot(d)
    rc, out, err = run_in(d, ["latency", "build", "--space", "s.yaml", "--out", "t.json"], capsys, monkeypatch)
    assert_refused(rc, out, err, key.split(".")[-1])
    assert snapshot(d) == before


@HYP
@given(cell=st.one_of(st.floats(max_value=-1e-12), st.just(float("nan")), st.just(float("inf")),
                     st.floats(min_value=3600.001, max_value=1.7e308)))  # issue 27 (11): at most an hour
def test_table_cells(cell: float, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str],
                     monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path_factory.mktemp("table")
    (d / "t.json").write_text(_table_with(cell))
    (d / "n.json").write_text(_nvit_with(cell))
    before = snapshot(d)
    rc, out, err = run_in(d, ["latency", "query", "t.json", "revit_micro"], capsys, monkeypatch)
    assert_refused(rc, out, err, "t.json")
    rc, out, err = run_in(d, ["latency", "import-nvit", "n.json", "--out", "x.json"], capsys, monkeypatch)
    assert_refused(rc, out, err, "n.json")
    assert snapshot(d) == before


# real processes --------------------------------------------------------------------------------
SUBPROCESS_IDS = [
    "generate--macs=nan", "generate--macs=1e400", "generate--embed-dim=0", "rules-show--depth=0",
    "train--threads=-1", "prune--eta=nan", "model-export-onnx--batch=0", "latency-validate--samples=0",
    "latency-validate--noise-k=-1", "latency-build--tol=nan", "search-run--threads=many", "demo--workers=0",
    "spec-params-abc", "spec-seeds-zero", "spec-lr-fast",
    "spec-budget-900T", "space-img-size-text", "space-depth-four", "query-table-negative", "import-nvit-negative",
    "model-info-embed-1e9", "generate-out-dir", "query-out-dir", "worker-missing-sqlite", "train-teacher-no-weights",
]


def test_subprocess_sample(ws: Path) -> None:
    """The same refusals from real ``python -m revit`` processes: exit code 2 and one stderr line."""
    by_id = {c.id: c for c in CASES}
    assert len(SUBPROCESS_IDS) >= 20
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    before = snapshot(ws)
    procs = []
    for cid in SUBPROCESS_IDS:
        c = by_id[cid]
        procs.append((c, subprocess.Popen([sys.executable, "-m", "revit", *c.argv], cwd=ws, env={**env, **c.env},
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        if len(procs) % 4 == 0:  # a few at a time on a small machine
            procs[-1][1].wait()
    for c, p in procs:
        out, err = p.communicate(timeout=120)
        assert_refused(p.returncode, out, err, c.needle)
    assert snapshot(ws) == before


# read-only and full disks (real tmpfs mounts; root only) -------------------------------------
@pytest.fixture
def tmpfs(small_tmpfs: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (conftest's ``small_tmpfs``) holding an old file and folder that must survive."""
    (small_tmpfs / "old.yaml").write_text("kept: true\n")
    (small_tmpfs / "old").mkdir()
    (small_tmpfs / "old" / "config.yaml").write_text("kept: true\n")
    yield small_tmpfs


def _fill(mnt: Path) -> None:
    fill_disk(mnt)


def _remount_ro(mnt: Path) -> None:
    r = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only ({r.stderr.strip()})")


DISK_CASES = {
    "generate-new": ["generate", "--uniform", "--setting", "micro", "--macs", "4M", "--out", "{m}/new.yaml"],
    "generate-replace": ["generate", "--uniform", "--setting", "micro", "--macs", "4M", "--out", "{m}/old.yaml"],
    "rules-fit": ["rules", "fit", "--to-rule", "paper", "--no-plot", "--out", "{m}/rule.yaml"],
    "query": ["latency", "query", str(TABLE), "revit_micro", "--out", "{m}/q.txt"],
    "import-nvit": ["latency", "import-nvit", "{ws}/nvit.json", "--out", "{m}/old.yaml"],
    "convert": ["model", "convert", "vit_tiny_patch16_224", "--out", "{m}/conv"],
}


@pytest.mark.parametrize("kind", ["read-only", "full"])
@pytest.mark.parametrize("name", list(DISK_CASES))
def test_unwritable_disk(name: str, kind: str, tmpfs: Path, ws: Path, capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An output on a read-only or full disk: one line naming the path, exit 2, no temp file, old files intact."""
    if kind == "full":
        _fill(tmpfs)
    else:
        _remount_ro(tmpfs)
    before = snapshot(tmpfs)
    argv = [a.format(m=tmpfs, ws=ws) for a in DISK_CASES[name]]
    out_path = argv[argv.index("--out") + 1]
    rc, out, err = run_in(ws, argv, capsys, monkeypatch)
    if name == "convert" and kind == "full" and rc == 2:
        out_path = str(tmpfs / "conv")  # the folder is named; its files are under it
    assert_refused(rc, out, err, out_path if kind == "read-only" else str(tmpfs))
    assert snapshot(tmpfs) == before


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["read-only", "full"])
def test_unwritable_disk_slow_writers(kind: str, tmpfs: Path, ws: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX export and a short training run on a read-only or full disk (torch export and training: slow)."""
    if kind == "full":
        _fill(tmpfs)
    else:
        _remount_ro(tmpfs)
    before = snapshot(tmpfs)
    for argv in (["model", "export-onnx", "revit_micro", "--out", f"{tmpfs}/m.onnx"],
                 ["train", "revit_micro", "--data", "digits", "--train-limit", "64", "--val-size", "32",
                  "--test-limit", "32", "--epochs", "1", "--batch-size", "32", "--threads", "1", "--out",
                  f"{tmpfs}/run"]):
        rc, out, err = run_in(ws, argv, capsys, monkeypatch)
        assert_refused(rc, out, err, str(tmpfs))
        after = snapshot(tmpfs)
        new = {k for k in set(after) - set(before) if not any(q.startswith(f"{k}/") for q in after)}
        assert {k: v for k, v in after.items() if k in before} == before  # no old file touched
        assert all(after[k] == "dir" for k in set(after) - set(before)) and not (new - {"run"}), after  # no file


# the layer's own pieces --------------------------------------------------------------------------
def test_atomic_output_failure_leaves_nothing(tmp_path: Path) -> None:
    """A writer that fails midway: no temp file, the old file intact; a folder as the target: OutputError."""
    from revit._io import atomic_output, atomic_write_text
    from revit.errors import OutputError

    old = tmp_path / "out.bin"
    old.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(old) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"] and old.read_bytes() == b"old"
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        atomic_write_text(tmp_path / "d", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "out.bin"]


@pytest.mark.parametrize("value,ok", [(1, True), (0.5, True), (0, False), (-1, False), (float("nan"), False),
                                      (float("inf"), False), (True, False), ("1", False), (None, False)])
def test_check_number(value: Any, ok: bool) -> None:
    """Finite, real and in range, or one ConfigError naming the value's name."""
    from revit.errors import ConfigError
    from revit.input_checks import check_number

    if ok:
        assert check_number(value, "x", 0, lo_open=True) == value
    else:
        with pytest.raises(ConfigError, match="^x must be"):
            check_number(value, "x", 0, lo_open=True)


def test_memory_check_matches_parameter_count() -> None:
    """The refusal threshold is the fp32 weight size against this machine's memory, from the exact count."""
    from revit import counting
    from revit.config import uniform
    from revit.errors import ConfigError
    from revit.input_checks import memory_bytes

    small = uniform(64, 2, 2, img_size=28, patch_size=7, in_chans=1, num_classes=10)
    per_width = 4 * counting.params(small) / 64**2  # weights grow ~ embed^2 (MLP and attention)
    embed = int((memory_bytes() / per_width) ** 0.5 * 2)
    with pytest.raises(ConfigError, match="memory"):
        counting.check_memory(uniform(embed, 2, 2, img_size=28, patch_size=7, in_chans=1, num_classes=10))
    counting.check_memory(small)


def test_pretrained_unreachable_hub_fails_at_once(ws: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Without HF_HUB_OFFLINE, an unreachable hub is one line within seconds (timm's retries took 53 s)."""
    import time

    import revit.cli.model as model_cli

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(model_cli, "HUB_HOST", "192.0.2.1")  # TEST-NET-1: never routed
    before = snapshot(ws)
    t0 = time.perf_counter()
    rc, out, err = run_in(ws, ["model", "convert", "vit_tiny_patch16_224", "--pretrained", "--out", "conv"], capsys,
                          monkeypatch)
    assert_refused(rc, out, err, "cannot reach 192.0.2.1")
    assert time.perf_counter() - t0 < 15
    assert snapshot(ws) == before


# issue 27 class 21: --json errors are JSON on stdout too; error lines cut long paths in the middle ----------
JSON_REFUSALS = {  # a refused command line of every command that has --json
    "model info": "model info cfg_embed-1e9.yaml --json",
    "latency query": "latency query table_cell-1.7e308.json revit_micro --json",
    "latency validate": "latency validate table_negative.json --samples 2 --json",
    "rules list": "rules list --json --no-such-flag",
    "rules fit": "rules fit folder --json",
    "generate": f"{GEN_NO_TARGET} --macs 900T --json",
    "prune": f"{PRUNE} --json",
    "train": f"{TRAIN} --json",
    "search run": "search run spec_budget-900T.yaml --json",
    "latency calibrate": "latency calibrate cpu_onnxruntime_fp32_bs64_t17 --json",
    # --configs 11 is refused on every machine (without a new setting, a machine other than the table's own
    # CPU is a transfer: on an AMD EPYC the Xeon table's transfer ran)
    "latency transfer": "latency transfer cpu_onnxruntime_fp32_bs64_t17 --threads 2 --configs 11 --out t.json --json",
    "latency smooth": "latency smooth cpu_onnxruntime_fp32_bs64_t17 --out s.json --lambda nan --json",
    "latency room": "latency room cpu_onnxruntime_fp32_bs64_t17 --groups 0 --json",
    "latency align": "latency align cpu_onnxruntime_fp32_bs64_t17 --out a.json --passes 0 --json",
    "search status": "search status spec.yaml --storage missing.db --json",
    "search report": "search report spec.yaml --out existing.txt --json",
    "search worker": "search worker spec.yaml --storage missing.db --json",
    "plugins": "plugins nope --json",
    "latency backends": "latency backends --json --no-such-flag",
}


def _json_commands() -> set[str]:
    """Every subcommand of the parser that takes --json."""
    from revit.cli.main import build_parser

    found = set()
    top = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, p in top.items():
        inner = [a for a in p._actions if a.__class__.__name__ == "_SubParsersAction"]
        for sub, q in (inner[0].choices.items() if inner else [("", p)]):
            if any("--json" in a.option_strings for a in q._actions):
                found.add(f"{name} {sub}".strip())
    return found


def test_every_json_command_has_a_json_refusal() -> None:
    assert set(JSON_REFUSALS) == _json_commands()


@pytest.mark.parametrize("command", list(JSON_REFUSALS))
def test_a_json_command_refused_prints_a_json_error_object(command: str, ws: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With --json a refusal is the one stderr line and, on stdout, one JSON object holding the same message."""
    before = snapshot(ws)
    rc, out, err = run_in(ws, JSON_REFUSALS[command].split(), capsys, monkeypatch)
    assert_refused(rc, out, err, "")
    doc = json.loads(out)
    assert out.count("\n") == 1 and doc["exit_code"] == 2 and doc["type"], out
    assert f"revit: error: {doc['error']}\n" == err
    assert snapshot(ws) == before
    rc, out, err = run_in(ws, [w for w in JSON_REFUSALS[command].split() if w != "--json"], capsys, monkeypatch)
    assert rc == 2 and out == "", "without --json stdout stays empty"


LONG = "/".join(["a" * 200] * 20) + "/end.yaml"  # a 4 KB path of existing-length names


@pytest.mark.parametrize("argv", [["model", "info", LONG], ["latency", "query", LONG, "revit_micro"],
                                  ["rules", "show", LONG], [*GEN.split(), "--out", f"existing.txt/{LONG}"],
                                  ["model", "info", "x" * 5000], ["latency", "query", "t" * 4000, "revit_micro"]],
                         ids=["model-info", "latency-query", "rules-show", "generate-out", "one-long-word",
                              "one-long-name"])
def test_error_lines_cut_long_paths_in_the_middle(argv: list[str], ws: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4 KB path is quoted by its start and its end, with the count of what was left out; never whole."""
    rc, out, err = run_in(ws, argv, capsys, monkeypatch)
    assert_refused(rc, out, err, "characters)...")
    assert len(err) < 600, err
    word = argv[2] if argv[0] != "generate" else argv[-1]
    assert word[:40] in err and word[-40:] in err and "cannot write" not in err  # only outputs are written


def test_one_line_elides_words_and_lines() -> None:
    """The cut keeps both ends and says how much it dropped; short text is left alone."""
    from revit.cli.main import MAX_LINE, MAX_WORD, one_line

    assert one_line("a short line\nand its cause") == "a short line; and its cause"
    word = "p" * 100 + "q" * 4000 + "r" * 100
    cut = one_line(f"cannot read {word} (no such file)")
    assert cut.startswith("cannot read " + "p" * 60) and cut.endswith("r" * 60 + " (no such file)")
    kept = int(cut.split("...(")[1].split(" ")[0])
    assert kept + 2 * (MAX_WORD // 2 - 10) == len(word)
    many = " ".join(["w" * 100] * 100)
    assert len(one_line(many)) <= MAX_LINE + 40


def test_json_reader_refuses_many_values_cheaply() -> None:
    """A 20 MB ``[{}, {}, ...]`` (5M values) is refused before any of it is built: in well under a second
    and with no memory beyond the text (parsing it took 1.2 GB); text at the limit still parses."""
    import time
    import tracemalloc

    from revit._io import MAX_JSON_VALUES, parse_json
    from revit.errors import FileFormatError

    text = '{"schema": "x", "j": [' + "{}, " * 5_000_000 + "{}]}"
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(FileFormatError, match="more than 1000000 JSON values"):
        parse_json(text, "big.json")
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 1.0 and peak < 1 << 20, (seconds, peak)
    at_limit = "[" + "0," * (MAX_JSON_VALUES - 2) + "0]"  # the list and its elements
    assert len(parse_json(at_limit, "ok.json")) == MAX_JSON_VALUES - 1
    commas = '["' + "," * (2 * MAX_JSON_VALUES) + '"]'  # commas inside a string are not values
    assert parse_json(commas, "ok.json") == ["," * (2 * MAX_JSON_VALUES)]


def test_json_outputs_are_finite_or_refused() -> None:
    """NaN and infinities are not JSON: the one writer names where one is and refuses."""
    from revit._io import dumps_json
    from revit.errors import RevitError

    assert json.loads(dumps_json({"a": [1.5, {"b": 2}]})) == {"a": [1.5, {"b": 2}]}
    for bad, where in [({"rows": [{"error": float("nan")}]}, "rows[0].error"), ([1.0, float("inf")], "[1]"),
                       (float("-inf"), "the value")]:
        with pytest.raises(RevitError, match=rf"{where.replace('[', '.').replace(']', '.')} is not a finite number"):
            dumps_json(bad)
