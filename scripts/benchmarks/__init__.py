"""The modes of scripts/benchmark.py, one module each: ``add_arguments(parser)`` and ``run(args) -> dict``."""
