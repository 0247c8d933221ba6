"""``revit model info|export-onnx|convert``: inspect a config, export it, convert timm checkpoints."""

from __future__ import annotations

import argparse
from typing import Any

from revit import counting
from revit.cli._common import add_command, add_overwrite_arg, info, print_json
from revit.config import ViTConfig
from revit.cost import MACS
from revit.input_checks import check_fits_memory, check_output_dir, check_output_file, integer
from revit.presets import resolve_config

MAX_EXPORT_BATCH = 4096  # the exported graph's dynamic batch axis goes up to this


def register(sub: Any) -> None:
    p = sub.add_parser("model", help="inspect, export and convert models")
    msub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)

    q = add_command(msub, "info", "dims per block, params and MACs (both conventions) of a model",
                    "revit model info revit_small   |   revit model info pruned.yaml --json")
    q.add_argument("model", help="registered name (revit_micro, revit_small, ...) or a ViT-config YAML")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_info)

    e = add_command(msub, "export-onnx", "export a model (random init or a checkpoint) to ONNX",
                    "revit model export-onnx revit_micro --out micro.onnx --checkpoint run/model.safetensors")
    e.add_argument("model", help="registered name or ViT-config YAML")
    e.add_argument("--out", required=True, help="ONNX file to write")
    e.add_argument("--checkpoint", help="local weights matching the config (.pth/.pth.tar/.safetensors)")
    e.add_argument("--use-ema", action="store_true", help="take a timm train.py checkpoint's EMA weights")
    e.add_argument("--batch", type=integer(1, MAX_EXPORT_BATCH), default=2,
                   help=f"example batch size, at most {MAX_EXPORT_BATCH} (the batch axis stays dynamic)")
    e.set_defaults(func=cmd_export)

    s = add_command(msub, "save", "write a model in timm's hub format (config.json, model.safetensors, README.md "
                    "model card) that timm.create_model('local-dir:DIR', pretrained=True) rebuilds",
                    "revit model save runs/micro-prune --out hub/micro-pruned --table cpu_onnxruntime_fp32_bs64_t17\n"
                    "  revit model save pruned.yaml --checkpoint run/model.safetensors --out hub/pruned")
    s.add_argument("model", help="a finished prune or train run folder, a registered name, or a ViT-config YAML")
    s.add_argument("--out", required=True, help="folder to write (a model folder; replaced only with --overwrite)")
    s.add_argument("--checkpoint", help="weights for a name or config (.safetensors/.pth); default: random init")
    s.add_argument("--use-ema", action="store_true", help="the EMA weights (of a train run or a timm checkpoint)")
    s.add_argument("--table", help="latency table (file or shipped name): its predicted latency goes into the card")
    add_overwrite_arg(s)
    s.set_defaults(func=cmd_save)

    c = add_command(msub, "convert",
                    "convert a local timm ViT/DeiT checkpoint into a revit config + weights and a hub folder (hf/)",
                    "revit model convert deit_small_patch16_224 --checkpoint deit_s.pth --out runs/deit_s")
    c.add_argument("timm_name", help="timm architecture of the checkpoint (e.g. deit_tiny_distilled_patch16_224)")
    c.add_argument("--checkpoint", help="local weights (.pth/.safetensors, or timm train.py's last.pth.tar / "
                   "model_best.pth.tar); without it, timm's random init")
    c.add_argument("--use-ema", action="store_true",
                   help="take the EMA weights (state_dict_ema) of a timm train.py checkpoint instead of the plain ones")
    c.add_argument("--pretrained", action="store_true",
                   help="download timm's weights from the hub (needs network; prefer --checkpoint FILE)")
    c.add_argument("--out", required=True, help="folder for config.yaml and model.safetensors")
    add_overwrite_arg(c)
    c.set_defaults(func=cmd_convert)


def describe(cfg: ViTConfig) -> dict[str, Any]:
    """Per-block dims and whole-model counts, as printed by ``model info``."""
    return {
        "name": cfg.name, "embed_dim": cfg.embed_dim, "depth": cfg.depth, "tokens": cfg.tokens,
        "img_size": cfg.img_size, "patch_size": cfg.patch_size, "num_classes": cfg.num_classes,
        "distilled": cfg.distilled,
        "blocks": [{**b.to_dict(), MACS: counting.block_macs(cfg.embed_dim, b, cfg.tokens),
                    "params": counting.block_params(cfg.embed_dim, b, cfg.qkv_bias)} for b in cfg.blocks],
        "params": counting.params(cfg),
        MACS: counting.macs(cfg, "nvit"),
        "macs_linear_only": counting.macs(cfg, "timm"),
        "conventions": {MACS: counting.CONVENTIONS["nvit"], "macs_linear_only": counting.CONVENTIONS["timm"]},
    }


def cmd_info(args: argparse.Namespace) -> int:
    cfg = resolve_config(args.model)
    d = describe(cfg)
    if args.json:
        print_json(d)
        return 0
    fc = counting.format_count
    print(f"{cfg.name or args.model}: embed {cfg.embed_dim}, depth {cfg.depth}, {cfg.tokens} tokens "
          f"({cfg.img_size}px / patch {cfg.patch_size}), {cfg.num_classes} classes"
          f"{', distilled' if cfg.distilled else ''}")
    print(f"{'block':>5} {'heads':>5} {'qk/h':>5} {'v/h':>5} {'mlp':>6} {'MACs':>9} {'params':>9}")
    for i, b in enumerate(d["blocks"]):
        print(f"{i:>5} {b['heads']:>5} {b['qk_dim']:>5} {b['v_dim']:>5} {b['mlp_dim']:>6} "
              f"{fc(b['macs']):>9} {fc(b['params']):>9}")
    if not all(b.has_attention and b.has_mlp for b in cfg.blocks):
        print("heads 0: the block has no attention branch; mlp 0: no MLP branch (neither has weights)")
    print(f"params {fc(d['params'])} ({d['params']:,})")
    print(f"MACs   {fc(d['macs'])} ({d['macs']:,})  [{counting.CONVENTIONS['nvit']}]")
    print(f"MACs   {fc(d['macs_linear_only'])} ({d['macs_linear_only']:,})  [{counting.CONVENTIONS['timm']}]")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from revit.models import build_model, load_checkpoint
    from revit.models.export import export_onnx

    check_output_file(args.out)
    cfg = resolve_config(args.model)
    widest = max([cfg.embed_dim] + [max(b.mlp_dim, b.heads * (2 * b.qk_dim + b.v_dim)) for b in cfg.blocks])
    check_fits_memory(4 * args.batch * (cfg.in_chans * cfg.img_size**2 + 4 * cfg.tokens * widest),
                      f"an example batch of {args.batch}", hint="use a smaller --batch")
    model = build_model(cfg)
    if args.checkpoint:
        info(str(load_checkpoint(model, args.checkpoint, use_ema=args.use_ema)))
    x = torch.randn(args.batch, cfg.in_chans, cfg.img_size, cfg.img_size)
    path = export_onnx(model, args.out, x)
    info(f"wrote {path} (input 'images' [batch, {cfg.in_chans}, {cfg.img_size}, {cfg.img_size}], output 'logits')")
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    from revit.workflows.hub import save_model

    table = None
    if args.table:
        from revit.latency.table import LatencyTable

        table = LatencyTable.load(args.table)
    out = save_model(args.model, args.out, checkpoint=args.checkpoint, use_ema=args.use_ema, table=table,
                     overwrite=args.overwrite)
    info(f"wrote {out}: config.json, model.safetensors and README.md (load with timm.create_model("
         f"'local-dir:{out.resolve()}', pretrained=True) after import revit.models)")
    return 0


HUB_HOST = "huggingface.co"


def _check_online(timeout: float = 3.0) -> None:
    """Fail at once (one line) when the hub cannot be reached, instead of retrying for a minute."""
    import os
    import socket
    import threading

    from revit.errors import CheckpointError

    hint = "pass a local file with --checkpoint FILE"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise CheckpointError(f"--pretrained needs the Hugging Face hub but HF_HUB_OFFLINE is set; {hint}")
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)  # name resolution ignores socket timeouts
    t.start()
    t.join(timeout + 0.5)
    if not ok:
        raise CheckpointError(f"--pretrained: cannot reach {HUB_HOST} (offline?); {hint}")


def cmd_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from revit.errors import CheckpointError, ConfigError, RevitError
    from revit.models import from_timm, read_state_dict
    from revit.models.checkpoint import check_compatible, check_file_shapes, save_weights
    from revit.models.convert import create_timm
    from revit.models.hub import HUB_DIR, save_pretrained
    from revit.run_folders import claim_run
    from revit.workflows.hub import convert_card

    if args.pretrained and args.checkpoint:
        raise ConfigError("give either --pretrained (hub download) or --checkpoint FILE, not both")
    if args.use_ema and not args.checkpoint:
        raise ConfigError("--use-ema picks the EMA weights of a --checkpoint FILE; give one")
    claim = claim_run(args.out, "model-convert", resume=True, overwrite=args.overwrite)  # a killed convert reruns
    check_output_dir(args.out)
    if args.pretrained:
        _check_online()
    tm = create_timm(args.timm_name)  # hf-hub: without --pretrained is refused here, before any hub access
    if args.pretrained:
        try:
            tm = create_timm(args.timm_name, pretrained=True)
        except RevitError:
            raise
        except Exception as e:  # noqa: BLE001 - offline, hub errors: all mean "no weights"
            raise CheckpointError(f"could not download {args.timm_name} weights ({type(e).__name__}); "
                                  "offline? pass a local file with --checkpoint FILE") from None
    if args.checkpoint:
        check_file_shapes(tm, args.checkpoint)  # from a safetensors header, before any tensor is read
        sd, note = read_state_dict(args.checkpoint, use_ema=args.use_ema)  # timm's loader
        check_compatible(tm, sd, args.checkpoint)
        tm.load_state_dict(sd)
        info(str(note))
    model = from_timm(tm)
    out = Path(args.out)
    try:
        claim.begin()
        model.config.save(out / "config.yaml")
        save_weights(model, out / "model.safetensors")
        card = convert_card(args.timm_name, checkpoint=args.checkpoint, use_ema=args.use_ema,
                            pretrained=args.pretrained)
        save_pretrained(model, out / HUB_DIR, card=card, overwrite=True)
    except (OSError, RevitError):  # a full disk: a new folder's own files go, no half-converted folder is left
        claim.discard()
        raise
    claim.finish()
    info(f"wrote {out / 'config.yaml'}, {out / 'model.safetensors'} and {out / HUB_DIR}/ (timm's hub format with a "
         "model card)")
    return 0
