"""JSON Lines files: read with errors that name the file and line, write atomically."""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator

from codelm.errors import DataError


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL file (gzip when it ends in .gz).

    Streams, so a file larger than memory is fine; the first malformed line or non-object stops it
    with a DataError naming the file and line."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row
