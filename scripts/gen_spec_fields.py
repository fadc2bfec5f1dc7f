"""Write docs/spec_fields.md, the table of every spec field, from the schema's field metadata.

    python scripts/gen_spec_fields.py          # rewrite docs/spec_fields.md
    python scripts/gen_spec_fields.py --check  # exit 1 when docs/spec_fields.md is stale
"""
import sys
from pathlib import Path

from reid_tao.builders import spec_fields_markdown
from reid_tao.io import atomic_write_text

PAGE = Path(__file__).resolve().parent.parent / "docs" / "spec_fields.md"


def main(argv) -> int:
    text = spec_fields_markdown()
    if "--check" in argv:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE} is stale; run: python scripts/gen_spec_fields.py", file=sys.stderr)
            return 1
        return 0
    atomic_write_text(PAGE, text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
