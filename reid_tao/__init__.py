"""reid_tao: person re-identification with TAO ReIdentificationNet spec files, on PyTorch Lightning."""

__version__ = "0.1.0"
__all__ = ["Embedder"]


def __getattr__(name: str):
    # `import reid_tao` stays cheap (no torch): the API is imported on first use of reid_tao.Embedder.
    if name == "Embedder":
        from reid_tao.api import Embedder

        return Embedder
    raise AttributeError(f"module 'reid_tao' has no attribute {name!r}")
