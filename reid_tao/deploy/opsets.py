"""The ONNX opsets an export can use: those torch's exporter writes and this onnxruntime loads."""

import torch

from reid_tao.errors import ConfigError

# Below opset 9 (ONNX IR v3) the exporter writes the weights as graph inputs, which runtimes treat as inputs.
MIN_USEFUL_OPSET = 9


def supported_opsets() -> range:
    """The opsets torch's TorchScript exporter writes (from torch itself), from MIN_USEFUL_OPSET up."""
    from torch.onnx import _constants

    low = max(getattr(_constants, "ONNX_MIN_OPSET", MIN_USEFUL_OPSET), MIN_USEFUL_OPSET)
    high = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET)
    return range(low, high + 1)


def onnxruntime_runs_opset(opset: int) -> bool:
    """Whether this onnxruntime loads a model of `opset` (asked of onnxruntime with a one-node graph)."""
    import onnxruntime
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - onnxruntime's Fail / InvalidGraph / ... derive from Exception only
        return False
    return True


def check_opset(opset: int) -> None:
    """export.opset within what the exporter writes and onnxruntime (the parity check) loads, else one line."""
    opsets = supported_opsets()
    if opset not in opsets or not onnxruntime_runs_opset(opset):
        usable = [value for value in (opsets[0], opsets[-1]) if onnxruntime_runs_opset(value)]
        shown = f"{usable[0]}..{usable[-1]}" if usable else f"{opsets[0]}..{opsets[-1]}"
        raise ConfigError(
            f"export.opset={opset} is not supported: torch {torch.__version__}'s ONNX exporter and "
            f"this onnxruntime support opsets {shown} (below {MIN_USEFUL_OPSET} the weights become "
            f"graph inputs); choose one in {shown}, e.g. 17"
        )
