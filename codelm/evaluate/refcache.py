"""On-disk cache of HumanEval+/MBPP+ reference results: expected outputs and the reference's timing.

A reference job runs a task's canonical solution on every input (seconds for the slowest tasks,
gigabytes of work in all); its outputs depend only on the data file, codelm's checker and the
interpreter, so a second `codelm score` of the same benchmark reads them back instead.

Location: codelm.files.cache_root()/reference/ ($CODELM_CACHE_DIR, else $XDG_CACHE_HOME/codelm, else
~/.cache/codelm), one
folder per identity (benchmark, sha256 of its data file, fingerprint of the checker sources, Python
version, CACHE_VERSION) and one file per task:

    CODELMREF2\\n{"task_id", "cpu_seconds", "max_rss_mb", "length", "sha256"}\\n<outputs: marshal bytes>

Each file is written atomically (a temp file beside it, then a rename; not fsynced: the checksum
catches a file torn by a crash, and the cache is only ever a shortcut). A file that cannot be read, or whose header,
task or checksum does not match, is ignored and its reference recomputed (then rewritten): the
cached outputs are loaded by the zygote's unmarshal, so nothing unverified is ever used.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

from codelm.errors import warn
from codelm.files import atomic_write_bytes, cache_root

CACHE_VERSION = 2  # bump when the meaning of a cached entry changes (the checker sources are hashed anyway)
MAGIC = b"CODELMREF2\n"


class ReferenceCache:
    """Reference results of one benchmark identity; `folder` None disables the cache."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.rejected: list[str] = []  # task ids whose entry existed but was unusable

    @classmethod
    def for_benchmark(cls, benchmark, enabled: bool = True) -> "ReferenceCache":
        identity = getattr(benchmark, "reference_identity", None)
        if not enabled or identity is None:
            return cls(None)
        digest = hashlib.sha256(json.dumps({
            "version": CACHE_VERSION, "benchmark": benchmark.name, **identity,
            "python": list(sys.version_info[:2]),
        }, sort_keys=True).encode()).hexdigest()[:24]
        return cls(cache_root() / "reference" / f"{_safe(benchmark.name)}-{digest}")

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def path(self, task_id: str) -> Path:
        return self.folder / (_safe(task_id) + ".ref")

    def get(self, task_id: str) -> dict | None:
        """{"payload": marshal bytes, "cpu_seconds", "max_rss_mb"} of a verified entry, else None."""
        if self.folder is None:
            return None
        path = self.path(task_id)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            if not data.startswith(MAGIC):
                raise ValueError("bad magic")
            end = data.index(b"\n", len(MAGIC))
            meta = json.loads(data[len(MAGIC):end])
            payload = data[end + 1:]
            if (meta.get("task_id") != task_id or meta.get("length") != len(payload)
                    or meta.get("sha256") != hashlib.sha256(payload).hexdigest()):
                raise ValueError("checksum")
            entry = {"payload": payload, "cpu_seconds": float(meta["cpu_seconds"]),
                     "max_rss_mb": float(meta["max_rss_mb"])}
        except (ValueError, KeyError, TypeError):
            self.rejected.append(task_id)
            return None
        return entry

    def put(self, task_id: str, payload: bytes, cpu_seconds: float, max_rss_mb: float) -> None:
        """Keep a task's reference outputs (marshal bytes, as sent to the sandbox) and timing."""
        if self.folder is None or not isinstance(payload, bytes):
            return
        body = payload
        meta = {"task_id": task_id, "cpu_seconds": cpu_seconds, "max_rss_mb": max_rss_mb,
                "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        try:
            atomic_write_bytes(self.path(task_id), MAGIC + json.dumps(meta).encode() + b"\n" + body)
        except OSError as e:  # a read-only or full disk costs the next run time, not this run
            warn(f"cannot write the reference cache ({e})")
            self.folder = None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)
