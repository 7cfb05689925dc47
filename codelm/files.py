"""Files a user keeps: JSON Lines read with errors that name the file and line; every write atomic
(a temp file beside the target, fsync, rename), so a crash never leaves a half-written file, and
with the user's umask (0644 by default), not the temp file's 0600.

One rule for every output a command writes (`claim_output`): codelm never replaces or deletes
something it did not write. An existing file, or a non-empty folder, that is not codelm's own earlier
output of the same kind is refused with one line naming it (`--force` replaces it), and an output
that is one of the command's inputs is refused even with `--force`. codelm recognises its own
outputs by a marker it writes (`mark_output`): a `.codelm` file inside a folder it made, and for a
file an entry in `.codelm-outputs.json` beside it (name, kind, size and modification time, so a
file edited or replaced since is no longer taken for codelm's).

Resumable runs share one toolkit: `AppendLog` (a journal that tolerates a torn last line), `open_run`
(a run folder's run.json: a new run, or the same run resumed, never another one mixed in), and
`cache_root()`, the one folder codelm caches downloads and reference results in."""
from __future__ import annotations

import gzip
import json
import os
import tempfile
import time
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from codelm.errors import CodelmError, DataError

DIR_MARKER = ".codelm"
FILE_MARKERS = ".codelm-outputs.json"


class OutputError(CodelmError):
    """An output path holds something codelm did not write (or is an input)."""


_UMASK: int | None = None


def current_umask() -> int:
    """The process's umask, read once without changing it (Linux: /proc/self/status)."""
    global _UMASK
    if _UMASK is None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("Umask:"):
                        _UMASK = int(line.split()[1], 8)
                        break
        except OSError:
            pass
        if _UMASK is None:  # no /proc: the classic set-and-restore, once
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return _UMASK


def file_mode() -> int:
    """The mode a plain new file gets from open(): 0o666 less the umask."""
    return 0o666 & ~current_umask()


def cache_root() -> Path:
    """codelm's cache folder: $CODELM_CACHE_DIR, else $XDG_CACHE_HOME/codelm, else ~/.cache/codelm."""
    if os.environ.get("CODELM_CACHE_DIR"):
        return Path(os.environ["CODELM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "codelm"


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
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; the file should read like any other the user writes
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
    import matplotlib  # late: heavy, and only plots need it

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
        self.append_many([item])

    def append_many(self, items: Iterable[dict]) -> None:
        """Several items in one write (a program's duplicates finish together)."""
        self._file.write("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
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


# ----------------------------------------------------------------------------- outputs
def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(a: Path, b: Path) -> bool:
    """a is b or lies inside folder b (resolved paths)."""
    try:
        a, b = a.resolve(), b.resolve()
    except OSError:
        return False
    return a == b or b in a.parents


def _file_markers(folder: Path) -> dict:
    try:
        data = json.loads((folder / FILE_MARKERS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_codelm_output(path: str | Path, kind: str) -> bool:
    """Whether `path` is an output of `kind` that codelm wrote and nobody changed since (files) or
    marked as its own (folders)."""
    path = Path(path)
    if path.is_dir():
        try:
            marker = json.loads((path / DIR_MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(marker, dict) and marker.get("kind") == kind
    entry = _file_markers(path.parent).get(path.name)
    if not isinstance(entry, dict) or entry.get("kind") != kind:
        return False
    try:
        st = path.stat()
    except OSError:
        return False
    return entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns


def claim_output(path: str | Path, kind: str, *, folder: bool, force: bool = False, inputs=(),
                 what: str = "output", legacy: Callable[[Path], bool] | None = None) -> Path:
    """Check that a command may write `path` (a file, or a folder with `folder=True`); raise an
    OutputError naming it otherwise. Allowed: a path that does not exist, an empty folder, codelm's own
    earlier output of the same `kind` (or one `legacy(path)` recognises, from before markers), or
    anything with `force` except a folder where a file is expected and vice versa. Never allowed, even
    with `force`: an output that is, or (for a folder) contains, one of `inputs`."""
    path = Path(path)
    for inp in inputs:
        if inp is None:
            continue
        inp = Path(inp)
        if _same(path, inp) or (folder and inp.exists() and _inside(inp, path)):
            raise OutputError(f"{path}: the {what} would replace the input {inp}; choose another path")
    if not path.exists() and not path.is_symlink():
        return path
    if folder:
        if not path.is_dir():
            raise OutputError(f"{path} exists and is not a folder; give a folder path for the {what}")
        if force or not any(path.iterdir()) or is_codelm_output(path, kind) or (legacy and legacy(path)):
            return path
        raise OutputError(f"{path} holds files codelm did not write (it is not a codelm {kind} folder); refusing to "
                          f"write into it (pass --force to, or choose another path)")
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file path for the {what}")
    if force or is_codelm_output(path, kind) or (legacy and legacy(path)):
        return path
    raise OutputError(f"{path} exists and codelm did not write it; refusing to overwrite it "
                      f"(pass --force to replace it, or choose another path)")


def mark_output(path: str | Path, kind: str) -> None:
    """Record `path` (just written) as codelm's own output of `kind`."""
    path = Path(path)
    if path.is_dir():
        marker = path / DIR_MARKER
        if not marker.exists():
            atomic_write(marker, json.dumps({"kind": kind, "written_by": "codelm"}) + "\n")
        return
    st = path.stat()
    markers = _file_markers(path.parent)
    markers = {n: e for n, e in markers.items() if (path.parent / n).exists()}  # forget deleted files
    markers[path.name] = {"kind": kind, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    atomic_write(path.parent / FILE_MARKERS, json.dumps(markers, indent=1, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- run folders
def open_run(out: str | Path, settings: dict, resume: bool, *, kind: str, header: dict) -> dict:
    """The record (OUT/run.json) of a resumable run folder: a new one (`header` plus `settings`; the
    folder is made and marked as codelm's `kind` output), or the one already there when `resume` is
    given and its settings are these. A folder holding another run, or a run without `resume`, is
    refused with one line. The caller writes the record (write_json) as the run advances."""
    out = Path(out)
    path = out / "run.json"
    if path.exists():
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            run = None
        if not isinstance(run, dict):
            raise CodelmError(f"{path}: not a codelm {kind} run file; use another --out folder")
        if not resume:
            name = (run.get("settings") or {}).get("benchmark") if isinstance(run.get("settings"), dict) else None
            raise CodelmError(f"{out} already holds a run ({kind}{', ' + str(name) if name else ''}): "
                              "pass --resume to continue it, or choose another --out folder")
        was = run.get("settings") if isinstance(run.get("settings"), dict) else {}
        if was != settings:
            diff = {k: (was.get(k), v) for k, v in settings.items() if was.get(k) != v}
            raise CodelmError(f"{path}: this folder holds a run with other settings (the different settings, "
                              f"was and now: {diff}); use another --out folder, or the same settings to resume")
        return run
    out.mkdir(parents=True, exist_ok=True)
    mark_output(out, kind)
    return {**header, "settings": settings}
