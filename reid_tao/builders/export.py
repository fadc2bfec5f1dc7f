"""Where `reid export` writes its model: export.onnx_file, or a name derived from the checkpoint and the data type."""

from pathlib import Path

from omegaconf import DictConfig

from reid_tao.config.loader import task_results_dir


def onnx_path_for(config: DictConfig, checkpoint: str) -> Path:
    """export.onnx_file, by default in export's results folder, named after the checkpoint and the data type:
    results_dir/export/reid_model_latest.onnx, ..._int8.onnx, ..._int8_cpu.onnx (export.int8_target=cpu); not
    beside the checkpoint, in train/."""
    if config.export.onnx_file:
        return Path(config.export.onnx_file)
    data_type = config.export.data_type
    suffix = "" if data_type == "fp32" else f"_{data_type}"
    if data_type == "int8" and config.export.get("int8_target", "tensorrt") != "tensorrt":
        suffix += f"_{config.export.int8_target}"
    return task_results_dir(config, "export") / f"{Path(checkpoint).stem}{suffix}.onnx"
