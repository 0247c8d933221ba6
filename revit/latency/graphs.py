"""ONNX graphs of a ViT block, the fixed parts and a whole model, built directly with ``onnx.helper``.

Exporting one graph per table cell through torch costs seconds; instead :func:`shared_block_graph`
is one block whose weights *and* reshape targets are graph inputs with symbolic dimensions, so one
inference session serves every cell.  :func:`block_graph`, :func:`fixed_graph` and
:func:`model_graph` build the same operators with the weights as initializers (what TensorRT and
whole-model validation need).  The block is the model's (``revit.models``):
``x + proj(attn(LN1(x)))`` with a fused qkv laid out ``[Q all heads | K all heads | V all heads]``
(head-major), scale ``qk_dim**-0.5``, then ``x + fc2(GELU(fc1(LN2(x))))``, LayerNorm eps 1e-6, exact GELU.
A block without attention (``heads: 0``) is its MLP half alone, one without MLP (``mlp_dim: 0``) its attention
half alone, each with its LayerNorm and residual add: what a latency table times to price an absent branch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from revit.config import BlockDims, ViTConfig

OPSET = 18
LN_EPS = 1e-6
ATTN_WEIGHTS = ("ln1_w", "ln1_b", "qkv_w", "qkv_b", "proj_w", "proj_b")
MLP_WEIGHTS = ("ln2_w", "ln2_b", "fc1_w", "fc1_b", "fc2_w", "fc2_b")
WEIGHT_NAMES = ATTN_WEIGHTS + MLP_WEIGHTS
SHAPE_NAMES = ("split", "q_shape", "v_shape", "merge_shape", "scale")


def weight_names(dims: BlockDims) -> tuple[str, ...]:
    """The weights a block of ``dims`` has: its attention half's and its MLP half's, for the branches it has."""
    return (ATTN_WEIGHTS if dims.has_attention else ()) + (MLP_WEIGHTS if dims.has_mlp else ())


def _onnx() -> Any:
    import onnx

    return onnx


def block_weights(embed_dim: int, dims: BlockDims, rng: np.random.Generator, qkv_bias: bool = True,
                  dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Random weights for one block, in the graph's layout (matmul weights are [in, out])."""
    e, h, q, v, m = embed_dim, dims.heads, dims.qk_dim, dims.v_dim, dims.mlp_dim
    qkv_out = h * (2 * q + v)

    def r(*shape: int, s: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * s).astype(dtype)

    w: dict[str, np.ndarray] = {}
    if dims.has_attention:  # drawn in this order whatever the block: a full block's weights do not change
        w |= {"ln1_w": (1 + r(e)).astype(dtype), "ln1_b": r(e),
              "qkv_w": r(e, qkv_out), "qkv_b": r(qkv_out) if qkv_bias else np.zeros(qkv_out, dtype),
              "proj_w": r(h * v, e), "proj_b": r(e)}
    if dims.has_mlp:
        w |= {"ln2_w": (1 + r(e)).astype(dtype), "ln2_b": r(e),
              "fc1_w": r(e, m), "fc1_b": r(m), "fc2_w": r(m, e), "fc2_b": r(e)}
    return w


def block_shapes(dims: BlockDims) -> dict[str, np.ndarray]:
    """The reshape/split targets and the softmax scale of a block (graph inputs of the shared graph); none
    without attention."""
    h, q, v = dims.heads, dims.qk_dim, dims.v_dim
    if not dims.has_attention:
        return {}
    return {
        "split": np.array([h * q, h * q, h * v], np.int64),
        "q_shape": np.array([0, 0, h, q], np.int64),
        "v_shape": np.array([0, 0, h, v], np.int64),
        "merge_shape": np.array([0, 0, h * v], np.int64),
        "scale": np.array(q ** -0.25, np.float32),  # applied to q and to k: product q ** -0.5
    }


def _block_nodes(p: str, x: str, w: Mapping[str, str], s: Mapping[str, str], out: str,
                 qkv_bias: bool = True, attention: bool = True, mlp: bool = True) -> list[Any]:
    """Nodes of one block reading ``x`` and writing ``out``; ``w``/``s`` map weight/shape names to tensors.

    ``attention``/``mlp`` False leave that half out (at least one is kept: a removed block is no block)."""
    if attention and mlp:
        return _attn_nodes(p, x, w, s, p + "x1", qkv_bias) + _mlp_nodes(p, p + "x1", w, out)
    if attention:
        return _attn_nodes(p, x, w, s, out, qkv_bias)
    return _mlp_nodes(p, x, w, out)


def _namer(p: str) -> Any:
    """``n(op, inputs, name, **attrs)``: a node whose output and name are ``p + name``."""
    H = _onnx().helper.make_node

    def n(op: str, ins: list[str], name: str, **kw: Any) -> Any:
        return H(op, ins, [p + name], name=p + name, **kw)

    return n


def _attn_nodes(p: str, x: str, w: Mapping[str, str], s: Mapping[str, str], out: str, qkv_bias: bool) -> list[Any]:
    """``out = x + proj(attention(LN1(x)))``."""
    H = _onnx().helper.make_node
    n = _namer(p)

    nodes = [
        n("LayerNormalization", [x, w["ln1_w"], w["ln1_b"]], "ln1", axis=-1, epsilon=LN_EPS),
        n("MatMul", [p + "ln1", w["qkv_w"]], "qkv_mm"),
    ]
    qkv = p + "qkv_mm"
    if qkv_bias:
        nodes.append(n("Add", [qkv, w["qkv_b"]], "qkv"))
        qkv = p + "qkv"
    nodes += [
        H("Split", [qkv, s["split"]], [p + "q0", p + "k0", p + "v0"], name=p + "split", axis=2),
        n("Reshape", [p + "q0", s["q_shape"]], "q1"),
        n("Transpose", [p + "q1"], "q", perm=[0, 2, 1, 3]),
        n("Reshape", [p + "k0", s["q_shape"]], "k1"),
        n("Transpose", [p + "k1"], "kt", perm=[0, 2, 3, 1]),
        n("Reshape", [p + "v0", s["v_shape"]], "v1"),
        n("Transpose", [p + "v1"], "v", perm=[0, 2, 1, 3]),
        # scale split over q and k (sqrt each), as torch's exporter writes scaled_dot_product_attention
        n("Mul", [p + "q", s["scale"]], "qs"),
        n("Mul", [p + "kt", s["scale"]], "kts"),
        n("MatMul", [p + "qs", p + "kts"], "scores"),
        n("Softmax", [p + "scores"], "attn", axis=-1),
        n("MatMul", [p + "attn", p + "v"], "ctx0"),
        n("Transpose", [p + "ctx0"], "ctx1", perm=[0, 2, 1, 3]),
        n("Reshape", [p + "ctx1", s["merge_shape"]], "ctx"),
        n("MatMul", [p + "ctx", w["proj_w"]], "proj0"),
        n("Add", [p + "proj0", w["proj_b"]], "proj"),
        H("Add", [x, p + "proj"], [out], name=p + "res1"),
    ]
    return nodes


def _mlp_nodes(p: str, x: str, w: Mapping[str, str], out: str) -> list[Any]:
    """``out = x + fc2(GELU(fc1(LN2(x))))``."""
    H = _onnx().helper.make_node
    n = _namer(p)

    return [
        n("LayerNormalization", [x, w["ln2_w"], w["ln2_b"]], "ln2", axis=-1, epsilon=LN_EPS),
        n("MatMul", [p + "ln2", w["fc1_w"]], "fc1_0"),
        n("Add", [p + "fc1_0", w["fc1_b"]], "fc1"),
        # exact GELU written as torch's exporter writes it: x * (0.5 * (1 + erf(x / sqrt 2)))
        n("Div", [p + "fc1", "c_sqrt2"], "g0"),
        n("Erf", [p + "g0"], "g1"),
        n("Add", [p + "g1", "c_one"], "g2"),
        n("Mul", ["c_half", p + "g2"], "g3"),
        n("Mul", [p + "fc1", p + "g3"], "gelu"),
        n("MatMul", [p + "gelu", w["fc2_w"]], "fc2_0"),
        n("Add", [p + "fc2_0", w["fc2_b"]], "fc2"),
        H("Add", [x, p + "fc2"], [out], name=p + "out"),
    ]


def _constants(dtype: Any = np.float32) -> list[Any]:
    nh = _onnx().numpy_helper
    return [nh.from_array(np.array(np.sqrt(2.0), dtype), "c_sqrt2"), nh.from_array(np.array(1.0, dtype), "c_one"),
            nh.from_array(np.array(0.5, dtype), "c_half")]


def _model(graph: Any) -> Any:
    onnx = _onnx()
    m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="revit")
    m.ir_version = min(m.ir_version, 10)
    onnx.checker.check_model(m)
    return m


def shared_block_graph(attention: bool = True, mlp: bool = True) -> Any:
    """One fp32 block whose weights, split sizes, reshape targets and scale are inputs (symbolic dims);
    ``attention``/``mlp`` False: the other half alone (a block without that branch)."""
    onnx = _onnx()
    T = onnx.TensorProto
    vi = onnx.helper.make_tensor_value_info
    sym = {"ln1_w": ["E"], "ln1_b": ["E"], "qkv_w": ["E", "QKV"], "qkv_b": ["QKV"], "proj_w": ["HV", "E"],
           "proj_b": ["E"], "ln2_w": ["E"], "ln2_b": ["E"], "fc1_w": ["E", "M"], "fc1_b": ["M"],
           "fc2_w": ["M", "E"], "fc2_b": ["E"]}
    names = (ATTN_WEIGHTS if attention else ()) + (MLP_WEIGHTS if mlp else ())
    inputs = [vi("x", T.FLOAT, ["B", "N", "E"])]
    inputs += [vi(k, T.FLOAT, sym[k]) for k in names]
    if attention:
        inputs += [vi("split", T.INT64, [3]), vi("q_shape", T.INT64, [4]), vi("v_shape", T.INT64, [4]),
                   vi("merge_shape", T.INT64, [3]), vi("scale", T.FLOAT, [])]
    nodes = _block_nodes("b_", "x", {k: k for k in names}, {k: k for k in SHAPE_NAMES}, "y",
                         attention=attention, mlp=mlp)
    g = onnx.helper.make_graph(nodes, "revit_block_shared", inputs, [vi("y", T.FLOAT, ["B", "N", "E"])],
                               initializer=_constants())
    return _model(g)


def _block_initializers(p: str, embed_dim: int, dims: BlockDims, rng: np.random.Generator,
                        qkv_bias: bool) -> tuple[list[Any], dict[str, str], dict[str, str]]:
    nh = _onnx().numpy_helper
    w = block_weights(embed_dim, dims, rng, qkv_bias)
    s = block_shapes(dims)
    inits = [nh.from_array(a, p + k) for k, a in w.items()] + [nh.from_array(a, p + k) for k, a in s.items()]
    return inits, {k: p + k for k in w}, {k: p + k for k in s}


def block_graph(embed_dim: int, dims: BlockDims, tokens: int, batch: int, seed: int = 0) -> Any:
    """One block with random weights as initializers and static input shape [batch, tokens, embed_dim]."""
    onnx = _onnx()
    T = onnx.TensorProto
    vi = onnx.helper.make_tensor_value_info
    inits, w, s = _block_initializers("b_", embed_dim, dims, np.random.default_rng(seed), True)
    nodes = _block_nodes("b_", "x", w, s, "y", attention=dims.has_attention, mlp=dims.has_mlp)
    shape = [batch, tokens, embed_dim]
    g = onnx.helper.make_graph(nodes, "revit_block", [vi("x", T.FLOAT, shape)], [vi("y", T.FLOAT, shape)],
                               initializer=_constants() + inits)
    return _model(g)


def _front_back(setting: Mapping[str, Any], embed_dim: int, batch: int, rng: np.random.Generator,
                blocks: list[tuple[BlockDims, bool]], dynamic_batch: bool = False) -> Any:
    """Patch embedding + tokens -> ``blocks`` -> final norm -> head(s), as one graph.

    ``dynamic_batch`` makes the batch dimension symbolic, as ``revit model export-onnx`` does (it
    changes which fusions onnxruntime applies); TensorRT gets static shapes.
    """
    onnx = _onnx()
    nh, H, T = onnx.numpy_helper, onnx.helper.make_node, onnx.TensorProto
    vi = onnx.helper.make_tensor_value_info
    e, c, p, img = embed_dim, int(setting["in_chans"]), int(setting["patch_size"]), int(setting["img_size"])
    classes, distilled, cls_tok = int(setting["num_classes"]), bool(setting["distilled"]), bool(setting["class_token"])
    n_patch = (img // p) ** 2
    prefix = int(cls_tok) + int(distilled)
    tokens = n_patch + prefix

    def r(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    inits = _constants() + [
        nh.from_array(r(e, c, p, p), "patch_w"), nh.from_array(r(e), "patch_b"),
        nh.from_array(np.array([0 if dynamic_batch else batch, e, n_patch], np.int64), "patch_shape"),
        nh.from_array(r(1, tokens, e), "pos"),
        nh.from_array((1 + r(e)), "norm_w"), nh.from_array(r(e), "norm_b"),
    ]
    nodes = [
        H("Conv", ["image", "patch_w", "patch_b"], ["pe0"], name="patch_embed", kernel_shape=[p, p], strides=[p, p]),
        H("Reshape", ["pe0", "patch_shape"], ["pe1"], name="pe_flat"),
        H("Transpose", ["pe1"], ["pe2"], name="pe_t", perm=[0, 2, 1]),
    ]
    x = "pe2"
    if prefix:
        inits.append(nh.from_array(r(1, prefix, e), "prefix"))
        if dynamic_batch:
            inits.append(nh.from_array(np.array([prefix, e], np.int64), "prefix_tail"))
            nodes += [H("Shape", ["image"], ["batch_dim"], name="batch_dim", start=0, end=1),
                      H("Concat", ["batch_dim", "prefix_tail"], ["prefix_shape"], name="prefix_shape", axis=0)]
        else:
            inits.append(nh.from_array(np.array([batch, prefix, e], np.int64), "prefix_shape"))
        nodes += [H("Expand", ["prefix", "prefix_shape"], ["prefix_b"], name="prefix_expand"),
                  H("Concat", ["prefix_b", x], ["tok0"], name="concat_tokens", axis=1)]
        x = "tok0"
    nodes.append(H("Add", [x, "pos"], ["t0"], name="pos_add"))
    x = "t0"
    for i, (dims, qkv_bias) in enumerate(blocks):
        bi, w, s = _block_initializers(f"blk{i}_", e, dims, rng, qkv_bias)
        inits += bi
        nodes += _block_nodes(f"blk{i}_", x, w, s, f"blk{i}_y", qkv_bias, dims.has_attention, dims.has_mlp)
        x = f"blk{i}_y"
    if not blocks:  # the fixed parts: the final norm reads a residual sum, as after a model's last block
        nodes.append(H("Add", [x, x], ["t_res"], name="junction"))
        x = "t_res"
    nodes.append(H("LayerNormalization", [x, "norm_w", "norm_b"], ["xn"], name="norm", axis=-1, epsilon=LN_EPS))
    if cls_tok:
        inits.append(nh.from_array(np.array(0, np.int64), "i0"))
        nodes.append(H("Gather", ["xn", "i0"], ["feat"], name="take_cls", axis=1))
    else:
        inits.append(nh.from_array(np.array([1], np.int64), "ax1"))
        nodes.append(H("ReduceMean", ["xn", "ax1"], ["feat"], name="avg_pool", keepdims=0))
    out = "feat"
    if classes > 0:
        inits += [nh.from_array(r(e, classes), "head_w"), nh.from_array(r(classes), "head_b")]
        nodes.append(H("Gemm", ["feat", "head_w", "head_b"], ["logits0"], name="head"))
        out = "logits0"
        if distilled:
            inits += [nh.from_array(np.array(1, np.int64), "i1"), nh.from_array(r(e, classes), "headd_w"),
                      nh.from_array(r(classes), "headd_b")]
            nodes += [H("Gather", ["xn", "i1"], ["featd"], name="take_dist", axis=1),
                      H("Gemm", ["featd", "headd_w", "headd_b"], ["logitsd"], name="head_dist"),
                      H("Add", ["logits0", "logitsd"], ["logits1"], name="avg_heads0"),
                      H("Mul", ["logits1", "c_half"], ["logits2"], name="avg_heads")]
            out = "logits2"
    nodes.append(H("Identity", [out], ["logits"], name="out"))
    b: int | str = "B" if dynamic_batch else batch
    g = onnx.helper.make_graph(nodes, "revit_vit", [vi("image", T.FLOAT, [b, c, img, img])],
                               [vi("logits", T.FLOAT, [b, classes if classes > 0 else e])], initializer=inits)
    return _model(g)


def fixed_graph(setting: Mapping[str, Any], embed_dim: int, batch: int, seed: int = 0,
                dynamic_batch: bool = False) -> Any:
    """Everything outside the blocks: patch embedding, prefix tokens + positions, final norm, head(s).

    In a whole model the final norm follows the last block's residual ``Add``, and onnxruntime fuses the
    two into one ``SkipLayerNormalization``: on the CPU it costs several times the plain norm (0.57 against
    0.09 ms for revit_micro at batch 64), once per model, whatever the blocks.  So the norm here reads a
    residual sum too (a ``junction`` Add of full-shaped tensors) and the fixed parts pay what a model pays.
    The block's own last ``Add``, which a model runs inside that fused node, is then counted twice; it is
    the cheapest node of a block.
    """
    return _front_back(setting, embed_dim, batch, np.random.default_rng(seed), [], dynamic_batch)


def model_graph(cfg: ViTConfig, batch: int, seed: int = 0, dynamic_batch: bool = False) -> Any:
    """A whole ViT of ``cfg`` with random weights (same operators as the block and fixed graphs)."""
    from revit.latency.table import config_setting

    return _front_back(config_setting(cfg), cfg.embed_dim, batch, np.random.default_rng(seed),
                       [(b, cfg.qkv_bias) for b in cfg.blocks], dynamic_batch)


def empty_graph(tokens: int, embed_dim: int) -> Any:
    """x -> Identity: times the per-call overhead of a session run with a block-sized input."""
    onnx = _onnx()
    T = onnx.TensorProto
    vi = onnx.helper.make_tensor_value_info
    g = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"], name="id")], "revit_empty",
                               [vi("x", T.FLOAT, ["B", tokens, embed_dim])],
                               [vi("y", T.FLOAT, ["B", tokens, embed_dim])])
    return _model(g)
