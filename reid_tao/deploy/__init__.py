"""Deployment: the trained model as an ONNX file and what runs or ships with it, one job a module.

- export: trace the model to ONNX (dynamic batch axis), check it against PyTorch;
- opsets: which ONNX opsets this torch writes and this onnxruntime loads;
- precision: fp16 and INT8 copies of an fp32 graph (the INT8 recipes per target);
- convert: export.data_type's copy, calibrated on held-out images and measured against fp32;
- runtime: exported models through onnxruntime (preprocessing from the sidecar), as embedding models;
- deepstream: the DeepStream tracker ReID config written beside an export.

It takes plain arguments (the builders map spec fields) and sits beside engine/: it needs the model's
preprocessing and data loading, never Lightning, so neither imports the other. Only this package imports the
ONNX libraries (onnx, onnxruntime, onnxconverter_common, torch.onnx); tests/test_layers.py checks it.
"""
