#!/usr/bin/env python3
"""Generate a tiny, deterministic ONNX "vision model" used only by tests to
exercise the image-embedding plumbing of crates/embedder.

pixel_values f32 [batch, 3, 224, 224]
  -> Conv(3->32, kernel 16, stride 16) + bias -> Relu     [batch, 32, 14, 14]
  -> Conv(32->64, kernel 2, stride 2) + bias -> Relu      [batch, 64, 7, 7]
  -> Flatten                                              [batch, 3136]
  -> MatMul [3136, 512] + bias                            [batch, 512]
  = image_embeds f32 [batch, 512]

The weights come from a seeded numpy generator, so every run produces a
byte-identical file. It has no semantic meaning whatsoever.

Usage: make_test_vision_model.py <out.onnx>
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20240601
OUT_DIM = 512


def build(out: Path) -> None:
    rng = np.random.default_rng(SEED)

    def arr(shape: tuple[int, ...], scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    inits = [
        numpy_helper.from_array(arr((32, 3, 16, 16), 1.0 / np.sqrt(3 * 16 * 16)), "conv1.w"),
        numpy_helper.from_array(arr((32,), 0.1), "conv1.b"),
        numpy_helper.from_array(arr((64, 32, 2, 2), 1.0 / np.sqrt(32 * 4)), "conv2.w"),
        numpy_helper.from_array(arr((64,), 0.1), "conv2.b"),
        numpy_helper.from_array(arr((64 * 7 * 7, OUT_DIM), 1.0 / np.sqrt(64 * 7 * 7)), "proj.w"),
        numpy_helper.from_array(arr((OUT_DIM,), 0.01), "proj.b"),
    ]
    nodes = [
        helper.make_node("Conv", ["pixel_values", "conv1.w", "conv1.b"], ["c1"], kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "conv2.w", "conv2.b"], ["c2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "proj.w"], ["mm"]),
        helper.make_node("Add", ["mm", "proj.b"], ["image_embeds"]),
    ]
    graph = helper.make_graph(
        nodes,
        "test-vision",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", OUT_DIM])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="EpisodicMemory scripts/model/make_test_vision_model.py",
    )
    model.ir_version = 8
    model.doc_string = "tiny seeded test vision model (no semantic meaning)"
    onnx.checker.check_model(model, full_check=True)
    tmp = out.with_suffix(".onnx.tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(out)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    build(Path(sys.argv[1]))


if __name__ == "__main__":
    main()
