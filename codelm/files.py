"""Files a user keeps: JSON Lines read with errors that name the file and line; every write atomic
(a temp file beside the target, fsync, rename), so a crash never leaves a half-written file."""
from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from codelm.errors import DataError


def iter_jsonl(path: str | Path, what: str = "it") -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL file (gzip when it ends in .gz).

    Streams, so a file larger than memory is fine; an unreadable file, or the first line that is not
    UTF-8, not JSON or not an object, stops it with a DataError naming the file and line (`what` names
    the file's contents in the message for an unreadable file)."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        f = opener(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} ({e.strerror})") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start + 1} of the line)") from None
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def atomic_write_stream(path: str | Path, write: Callable[[IO], object], binary: bool = False) -> None:
    """Call write(f) on a temp file beside path, then put it in place: all of it or nothing (parent
    folders are created; a failure removes the temp file and propagates)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | Path, text: str) -> None:
    """Write text to path all at once or not at all (parent folders are created)."""
    atomic_write_stream(path, lambda f: f.write(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write_stream(path, lambda f: f.write(data), binary=True)


def write_json(path: str | Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed); imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int | None = None) -> None:
    """Lay out a matplotlib figure, write it as a PNG atomically, and free it."""
    try:
        fig.tight_layout()
        atomic_write_stream(path, lambda f: fig.savefig(f, format="png", dpi=dpi), binary=True)
    finally:
        pyplot().close(fig)
