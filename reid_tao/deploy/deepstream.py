"""The DeepStream tracker (NvDCF / NvDeepSORT) `ReID:` block for an exported model, written beside the ONNX.

Field names and enum values follow NVIDIA's NvDCF sample config (config_tracker_NvDCF_accuracy.yml of
DeepStream 6.4/7.x, as shipped in deepstream_tao_apps) and the REID_TYPES enum of the DeepStream 9.2 API
reference (IReID.hpp): reidType 0 = none, 1 = NvDeepSORT association, 2 = re-association (NvDCF),
3 = both; networkMode 0 = FP32, 1 = FP16, 2 = INT8; inputOrder 0 = NCHW; colorFormat 0 = RGB.
DeepStream feeds the network ``(pixel - offsets[c]) * netScaleFactor`` on 0-255 pixels, so offsets are
255 x mean and the single scale factor is 1 / (255 x std).
"""

import logging
from pathlib import Path
from typing import Any

import yaml

from reid_tao.data.preprocessing import Preprocessing
from reid_tao.io.atomic import atomic_write_text

log = logging.getLogger("reid_tao.export")

REID_REASSOCIATION = 2  # NvDCF's ReID-based re-association (1 = NvDeepSORT, 3 = both)
# export.data_type -> the tracker's networkMode {fp32=0, fp16=1, int8=2} (the tracker's own enum: gst-nvinfer's
# network-mode numbers INT8 and FP16 the other way round). TensorRT builds an fp32 ONNX in FP16 (as NVIDIA's
# samples do); the INT8 file carries its own scales (QDQ), so no calibration table is needed.
NETWORK_MODES = {"fp32": 1, "fp16": 1, "int8": 2}
ENGINE_PRECISION = {0: "fp32", 1: "fp16", 2: "int8"}
BATCH_SIZE = 100  # crops per TensorRT batch, NVIDIA's sample value
HISTORY_SIZE = 100  # features kept per target, NVIDIA's sample value


def scale_factor(pixel_std) -> tuple[float, float]:
    """(netScaleFactor, max relative scale error): DeepStream has one factor, so a per-channel std becomes
    its mean, and channel c is then scaled by std_c / mean_std instead of 1 (error |std_c / mean_std - 1|)."""
    mean_std = sum(pixel_std) / len(pixel_std)
    return 1.0 / (255.0 * mean_std), max(abs(std / mean_std - 1.0) for std in pixel_std)


def reid_block(
    preprocessing: Preprocessing, feature_dim: int, onnx_file: Path, data_type: str = "fp32"
) -> dict[str, Any]:
    """The values of the `ReID:` block (engine path suggested beside the ONNX; change it per GPU/precision)."""
    height, width = preprocessing.input_size
    factor, _ = scale_factor(preprocessing.pixel_std)
    onnx_file = Path(onnx_file).resolve()
    network_mode = NETWORK_MODES[data_type]
    return {
        "reidType": REID_REASSOCIATION,
        "batchSize": BATCH_SIZE,
        "workspaceSize": 1000,
        "reidFeatureSize": int(feature_dim),
        "reidHistorySize": HISTORY_SIZE,
        "inferDims": [3, height, width],
        "networkMode": network_mode,
        "inputOrder": 0,
        "colorFormat": 0,
        "offsets": [round(255.0 * mean, 6) for mean in preprocessing.pixel_mean],
        "netScaleFactor": round(factor, 10),
        # Training and evaluation stretch each crop to H x W (no padding): keep DeepStream's resize the same.
        "keepAspc": 0,
        # The exported embedding is not L2-normalised; the tracker compares normalised features.
        "addFeatureNormalization": 1,
        "onnxFile": str(onnx_file),
        "modelEngineFile": str(
            onnx_file.with_name(f"{onnx_file.name}_b{BATCH_SIZE}_gpu0_{ENGINE_PRECISION[network_mode]}.engine")
        ),
    }


HEADER = """\
# DeepStream tracker ReID config for {onnx} (written by `reid export`).
# Merge this ReID: block into your NvDCF tracker config (e.g. config_tracker_NvDCF_accuracy.yml) and set
# TrajectoryManagement.enableReAssoc: 1 (reidType 2 = ReID-based re-association; 1 = NvDeepSORT, 3 = both).
# modelEngineFile: where DeepStream builds and caches the TensorRT engine on first run; change it as you like.
# networkMode {{fp32=0, fp16=1, int8=2}}; colorFormat {{RGB=0, BGR=1}}; inputOrder {{NCHW=0, NHWC=1}}.
"""


def write_tracker_config(
    path: Path, preprocessing: Preprocessing, feature_dim: int, onnx_file: Path, data_type: str = "fp32"
) -> Path:
    _, error = scale_factor(preprocessing.pixel_std)
    if error > 0:
        log.warning(
            "DeepStream takes one netScaleFactor: the per-channel pixel_std %s becomes its mean, which "
            "scales each channel's input by up to %.1f%% off; train with a uniform std (e.g. "
            "dataset.pixel_std=[0.226,0.226,0.226], as specs/market1501_deepstream.yaml) for an exact match",
            list(preprocessing.pixel_std),
            100 * error,
        )
    body = yaml.safe_dump(
        {"ReID": reid_block(preprocessing, feature_dim, onnx_file, data_type)}, sort_keys=False, default_flow_style=None
    )
    atomic_write_text(path, HEADER.format(onnx=Path(onnx_file).name) + body)
    return path


def tracker_config_path(onnx_file: Path) -> Path:
    """``model.onnx`` -> ``model_nvdcf_reid.yml`` beside it."""
    onnx_file = Path(onnx_file)
    return onnx_file.with_name(f"{onnx_file.stem}_nvdcf_reid.yml")
