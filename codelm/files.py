"""Files a user keeps: JSON Lines read with errors that name the file and line; every write atomic
(a temp file beside the target, fsync, rename), so a crash never leaves a half-written file."""
from __future__ import annotations

import gzip
import json
import os
import tempfile
import time
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


class AppendLog:
    """An append-only JSONL record that a killed run resumes from: line 1 identifies the run (`header`),
    each further line is one finished item. A last line torn by a crash is dropped when the log is
    opened (the file is rewritten first, so nothing is ever appended after a torn line). Every line
    is flushed at once (it survives the process being killed) and synced to disk at least once a
    second and on close (it survives the machine going down, but for the last second)."""

    SYNC_EVERY_S = 1.0

    def __init__(self, path: str | Path, header: dict, what: str = "record", other_run: str = "belongs to another run"):
        self.path = Path(path)
        self.header = header
        self.what = what  # names the file in errors: "generation cache", "score journal"
        self.other_run = other_run  # what a log with another header is, in its error
        self._file = None
        self._synced = 0.0

    def read(self) -> list[dict] | None:
        """The items of an existing log (None when there is none); a log of another run is refused."""
        if not self.path.exists():
            return None
        lines = self.path.read_text(encoding="utf-8", errors="replace").split("\n")
        try:
            header = json.loads(lines[0])
        except (json.JSONDecodeError, IndexError):
            raise DataError(f"{self.path}: not a codelm {self.what}; delete it to start over") from None
        if header != self.header:
            raise DataError(f"{self.path} {self.other_run} ({header}); use another output folder, "
                            "or delete it to start over")
        items = []
        for line in lines[1:]:
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                continue  # the torn last line of a killed run
            if isinstance(item, dict):
                items.append(item)
        return items

    def open(self, items: Iterable[dict] = ()) -> "AppendLog":
        """Write the header and `items` (what was kept of an earlier log), then append from there."""
        atomic_write(self.path, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in [self.header, *items]))
        self._file = open(self.path, "a", encoding="utf-8")
        self._synced = time.monotonic()
        return self

    def append(self, item: dict) -> None:
        self._file.write(json.dumps(item, ensure_ascii=False) + "\n")
        self._file.flush()
        if time.monotonic() - self._synced >= self.SYNC_EVERY_S:
            os.fsync(self._file.fileno())
            self._synced = time.monotonic()

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
