"""Write docs/spec_fields.md, the table of every spec field, from the schema's field metadata, and
reid_tao/config/table_choices.py, the choices of the table-backed fields that `reid TASK --help SECTION` shows.

    python scripts/gen_spec_fields.py          # rewrite both
    python scripts/gen_spec_fields.py --check  # exit 1 when one is stale
"""

import sys
from pathlib import Path

from reid_tao.builders import spec_fields_markdown, table_choices_module
from reid_tao.io.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "spec_fields.md"
TABLES = ROOT / "reid_tao" / "config" / "table_choices.py"


def main(argv) -> int:
    outputs = {PAGE: spec_fields_markdown(), TABLES: table_choices_module()}
    if "--check" in argv:
        stale = [path for path, text in outputs.items() if not path.is_file() or path.read_text() != text]
        for path in stale:
            print(f"{path} is stale; run: python scripts/gen_spec_fields.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        atomic_write_text(path, text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
