"""Running the model with PyTorch Lightning, from plain arguments (the builders map the spec onto them).

- module: the LightningModule (training and validation steps, optimiser and schedule from optim);
- callbacks, status, loggers, metric_names: what a run shows and records (epoch lines, status.json, CSV and
  TensorBoard/W&B loggers, the names of the logged metrics);
- checkpoint, preemption: checkpoints written in the background, resume, stopping cleanly on a signal;
- devices, distributed, precision: which devices and processes, and in which precision;
- extractor: features of a dataset through Lightning's predict loop (evaluate, inference);
- adaptation: the callbacks of unsupervised domain adaptation (pseudo labels, source interpolation);
- tuning: the callback that reports a trial's metric to an Optuna study (and the samplers and pruners by name).

What does not run through Lightning lives elsewhere: exported ONNX models in deploy/, spec mapping in builders/.
"""
