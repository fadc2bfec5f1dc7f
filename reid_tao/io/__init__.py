"""File input and output, one module per job (imports only ``errors``):

- :mod:`.atomic`: atomic, umask-following writes (text, bytes, JSON, torch.save, figures, a file name for
  writers that want one, a staging folder for whole trees), appends of whole lines, and the refusal to
  replace a FIFO, a device or a system folder with an output;
- :mod:`.regular_files`: what is at a path, and reading inputs without blocking on a FIFO or a device;
- :mod:`.safe_load`: ``torch.load`` without running code from the file (the allow-list of plain-data types);
- :mod:`.checkpoint_file`: the one reader of weights and checkpoint files, which every caller uses.

The one-line error helpers (``first_line``, ``last_line``, ``error_line``) live in :mod:`reid_tao.errors`.
The names below are re-exported so ``from reid_tao.io import X`` keeps working; reid_tao's own modules import
from the module that owns the name. Importing this package imports no torch, omegaconf or matplotlib.
"""

from reid_tao.errors import error_line, first_line, last_line
from reid_tao.io.atomic import (
    append_line,
    atomic_output,
    atomic_path,
    atomic_save_figure,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_output_target,
    open_append,
    staging_dir,
)
from reid_tao.io.regular_files import NotARegularFile, not_a_regular_file, read_regular_file
from reid_tao.io.safe_load import TRUST_FIELD, safe_torch_load

__all__ = [
    "atomic_output",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "atomic_save_figure",
    "staging_dir",
    "safe_torch_load",
    "TRUST_FIELD",
    "append_line",
    "error_line",
    "first_line",
    "last_line",
    "atomic_write_bytes",
    "check_output_target",
    "not_a_regular_file",
    "read_regular_file",
    "NotARegularFile",
    "open_append",
]
