"""reid_tao: person re-identification with TAO ReIdentificationNet spec files, on PyTorch Lightning."""

__version__ = "0.1.0"
