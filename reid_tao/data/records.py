"""Image records (path, person id, camera id), whatever dataset layout they were read from."""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple


@dataclass(frozen=True)
class ImageRecord:
    """One image; ``pid`` -1 marks junk (readers skip it), 0 a distractor (kept in galleries, never a match)."""

    path: str
    pid: int
    camid: int


def relabel(records: Sequence[ImageRecord]) -> Tuple[List[int], Dict[int, int]]:
    """Map the identities of the training records to 0..N-1 (sorted by original id)."""
    mapping = {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}
    return [mapping[r.pid] for r in records], mapping


def summary_table(subsets: Dict[str, Sequence[ImageRecord]]) -> str:
    """Plain-text table: subset, ids, images, cameras."""
    rows = [("subset", "ids", "images", "cameras")]
    for name, records in subsets.items():
        rows.append((name, str(len({r.pid for r in records})), str(len(records)),
                     str(len({r.camid for r in records}))))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
