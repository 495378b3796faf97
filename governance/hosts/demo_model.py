"""Write a tiny ONNX model (y = x · W + b) into a directory, for tests and the self-hosted demo.

    python -m governance.hosts.demo_model DIR --weights 1,2,3 --bias 0.5

The model has one FP32 input `input` of shape [batch, k] and one FP32 output `output` of shape
[batch, m] (m = 1 when `weights` is a flat list). It is built with onnx.helper: no pickle, no
training, a few hundred bytes. No Django here.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

MODEL_FILE = "model.onnx"
INPUT_NAME = "input"
OUTPUT_NAME = "output"


def linear_model_bytes(weights: Sequence, bias: float | Sequence[float] = 0.0, *, name: str = "linear") -> bytes:
    """The serialized ONNX model for y = x · W + b."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.asarray(weights, dtype=np.float32)
    if w.ndim == 1:
        w = w.reshape(-1, 1)
    if w.ndim != 2 or w.size == 0:
        raise ValueError("weights must be a non-empty list or a list of rows")
    k, m = w.shape
    b = np.broadcast_to(np.asarray(bias, dtype=np.float32), (m,)).copy()
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [INPUT_NAME, "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], [OUTPUT_NAME]),
        ],
        name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", m])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    opsets = [helper.make_opsetid("", 13)]
    model = helper.make_model(graph, producer_name="model-governance-registry", opset_imports=opsets)
    model.ir_version = 8  # readable by every onnxruntime of the last years
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_linear_model(
    directory: str | Path, weights: Sequence, bias: float | Sequence[float] = 0.0, *, filename: str = MODEL_FILE
) -> Path:
    """Write the model to `directory/filename` (creating the directory) and return its path."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    target = path / filename
    target.write_bytes(linear_model_bytes(weights, bias))
    return target


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--weights", default="1,1,1", help="comma-separated weights (one output)")
    parser.add_argument("--bias", type=float, default=0.0)
    args = parser.parse_args(argv)
    weights = [float(value) for value in args.weights.split(",")]
    print(write_linear_model(args.directory, weights, args.bias))


if __name__ == "__main__":
    main()
