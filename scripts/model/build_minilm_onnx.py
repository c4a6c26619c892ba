#!/usr/bin/env python3
"""Build an exact fp32 ONNX graph of all-MiniLM-L6-v2 (a BERT encoder) from
its safetensors weights, without torch.

Inputs  : input_ids, attention_mask, token_type_ids  int64 [batch, seq]
Output  : last_hidden_state                          f32   [batch, seq, 384]

The graph mirrors HuggingFace `BertModel` (eager attention): embeddings
(word + absolute position + token type) -> LayerNorm -> N x [self-attention
with additive mask (1 - mask) * finfo(f32).min, softmax, residual +
LayerNorm, FFN with exact erf GELU, residual + LayerNorm]. The pooler is not
exported: mean pooling + L2 normalisation are done by the Rust caller
(crates/embedder), as sentence-transformers does.

Usage: build_minilm_onnx.py <model_dir with model.safetensors + config.json> <out.onnx>
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

OPSET = 17  # LayerNormalization is in the default domain from opset 17
IR_VERSION = 8


def build(model_dir: Path, out: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") != "bert":
        raise SystemExit(f"expected a BERT config, got model_type={cfg.get('model_type')!r}")
    if cfg.get("hidden_act") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
        raise SystemExit("only exact-GELU BERT with absolute positions is supported")
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    layers = int(cfg["num_hidden_layers"])
    eps = float(cfg["layer_norm_eps"])
    head_dim = hidden // heads
    assert head_dim * heads == hidden

    w = load_file(str(model_dir / "model.safetensors"))
    # Some exports prefix the keys with "bert."
    if "bert.embeddings.word_embeddings.weight" in w:
        w = {k[len("bert."):]: v for k, v in w.items() if k.startswith("bert.")}

    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def weight(key: str, transpose: bool = False) -> str:
        arr = w[key].astype(np.float32)
        if transpose:  # torch Linear stores [out, in]; MatMul wants [in, out]
            arr = arr.T
        return init(key, arr)

    counter = [0]

    def node(op: str, inputs: list[str], prefix: str, **attrs) -> str:
        counter[0] += 1
        out_name = f"{prefix}/{op}_{counter[0]}"
        nodes.append(helper.make_node(op, inputs, [out_name], name=out_name, **attrs))
        return out_name

    def linear(x: str, key: str, prefix: str) -> str:
        y = node("MatMul", [x, weight(f"{key}.weight", transpose=True)], prefix)
        return node("Add", [y, weight(f"{key}.bias")], prefix)

    def layer_norm(x: str, key: str, prefix: str) -> str:
        return node(
            "LayerNormalization",
            [x, weight(f"{key}.weight"), weight(f"{key}.bias")],
            prefix,
            axis=-1,
            epsilon=eps,
        )

    # ---- constants
    c_idx0 = init("const/idx0", np.array([0], dtype=np.int64))
    c_idx1 = init("const/idx1", np.array([1], dtype=np.int64))
    c_idx2 = init("const/idx2", np.array([2], dtype=np.int64))
    c_axes_12 = init("const/axes_1_2", np.array([1, 2], dtype=np.int64))
    c_one_f = init("const/one_f32", np.array(1.0, dtype=np.float32))
    c_min_f = init("const/f32_min", np.array(np.finfo(np.float32).min, dtype=np.float32))
    c_scale = init("const/attn_scale", np.array(1.0 / math.sqrt(head_dim), dtype=np.float32))
    c_split_shape = init("const/split_heads", np.array([0, 0, heads, head_dim], dtype=np.int64))
    c_merge_shape = init("const/merge_heads", np.array([0, 0, hidden], dtype=np.int64))
    c_sqrt2 = init("const/sqrt2", np.array(math.sqrt(2.0), dtype=np.float32))
    c_half = init("const/half", np.array(0.5, dtype=np.float32))

    # ---- embeddings
    p = "embeddings"
    word = node("Gather", [weight("embeddings.word_embeddings.weight"), "input_ids"], p, axis=0)
    shape = node("Shape", ["input_ids"], p)
    seq_len_1d = node("Slice", [shape, c_idx1, c_idx2], p)  # [1] = [seq]
    # position ids are 0..seq, so the rows are a prefix slice of the table
    pos = node("Slice", [weight("embeddings.position_embeddings.weight"), c_idx0, seq_len_1d, c_idx0], p)
    tok = node("Gather", [weight("embeddings.token_type_embeddings.weight"), "token_type_ids"], p, axis=0)
    emb = node("Add", [node("Add", [word, tok], p), pos], p)
    x = layer_norm(emb, "embeddings.LayerNorm", p)

    # ---- extended attention mask: [batch, 1, 1, seq], 0 for keep, f32.min for pad
    p = "mask"
    mask_f = node("Cast", ["attention_mask"], p, to=TensorProto.FLOAT)
    inv = node("Sub", [c_one_f, mask_f], p)
    bias = node("Mul", [inv, c_min_f], p)
    mask_bias = node("Unsqueeze", [bias, c_axes_12], p)

    # ---- encoder
    for i in range(layers):
        p = f"layer{i}"
        k = f"encoder.layer.{i}"
        q = node("Transpose", [node("Reshape", [linear(x, f"{k}.attention.self.query", p), c_split_shape], p)], p, perm=[0, 2, 1, 3])
        kk = node("Transpose", [node("Reshape", [linear(x, f"{k}.attention.self.key", p), c_split_shape], p)], p, perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [linear(x, f"{k}.attention.self.value", p), c_split_shape], p)], p, perm=[0, 2, 1, 3])
        scores = node("Mul", [node("MatMul", [q, kk], p), c_scale], p)
        scores = node("Add", [scores, mask_bias], p)
        probs = node("Softmax", [scores], p, axis=-1)
        ctx = node("MatMul", [probs, v], p)
        ctx = node("Reshape", [node("Transpose", [ctx], p, perm=[0, 2, 1, 3]), c_merge_shape], p)
        attn = linear(ctx, f"{k}.attention.output.dense", p)
        x = layer_norm(node("Add", [attn, x], p), f"{k}.attention.output.LayerNorm", p)
        h = linear(x, f"{k}.intermediate.dense", p)
        # exact GELU: 0.5 * h * (1 + erf(h / sqrt(2)))
        erf = node("Erf", [node("Div", [h, c_sqrt2], p)], p)
        h = node("Mul", [node("Mul", [h, c_half], p), node("Add", [erf, c_one_f], p)], p)
        ffn = linear(h, f"{k}.output.dense", p)
        x = layer_norm(node("Add", [ffn, x], p), f"{k}.output.LayerNorm", p)

    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))

    dims = ["batch", "sequence"]
    graph = helper.make_graph(
        nodes,
        "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info(n, TensorProto.INT64, dims) for n in ("input_ids", "attention_mask", "token_type_ids")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, dims + [hidden])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="EpisodicMemory scripts/model/build_minilm_onnx.py",
    )
    model.ir_version = IR_VERSION
    model.doc_string = "all-MiniLM-L6-v2 BERT encoder (fp32), built from safetensors without torch"
    onnx.checker.check_model(model, full_check=True)
    tmp = out.with_suffix(".onnx.tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(out)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    build(Path(sys.argv[1]), Path(sys.argv[2]))


if __name__ == "__main__":
    main()
