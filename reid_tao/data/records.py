"""Image records (path, person id, camera id), whatever dataset layout they were read from."""

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ImageRecord:
    """One image; ``pid`` -1 marks junk (readers skip it), 0 a distractor (kept in galleries, never a match).

    ``pid`` follows that evaluation convention whatever the layout; a reader whose dataset numbers ordinary
    people from 0 (list files) shifts its ids and keeps the dataset's own id in ``dataset_pid``."""

    path: str
    pid: int
    camid: int
    dataset_pid: int | None = None

    @property
    def shown_pid(self) -> int:
        """The id as the dataset writes it (for plots and messages)."""
        return self.pid if self.dataset_pid is None else self.dataset_pid


def relabel(records: Sequence[ImageRecord]) -> tuple[list[int], dict[int, int]]:
    """Map the identities of the training records to 0..N-1 (sorted by original id)."""
    mapping = {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}
    return [mapping[r.pid] for r in records], mapping


def summary_table(subsets: dict[str, Sequence[ImageRecord]], unlabeled: Sequence[str] = ()) -> str:
    """Plain-text table: subset, ids, images, cameras; the subsets named in ``unlabeled`` have no ids to count
    (their readers give every image one placeholder id)."""
    rows = [("subset", "ids", "images", "cameras")]
    for name, records in subsets.items():
        ids = "unlabeled" if name in unlabeled else str(len({r.pid for r in records}))
        rows.append((name, ids, str(len(records)), str(len({r.camid for r in records}))))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
