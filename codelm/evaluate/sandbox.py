"""Run untrusted programs: Linux namespaces without Docker, rlimits, and a pool of forking workers.

(Over 500 lines on purpose: the harness side of one protocol with zygote.py, whose framing, job
pipelining, worker restarts and mode fallback must be read together to keep every verdict sound.)

Isolation levels (`mode`):
  namespaces  each worker lives in its own user (when available), mount, PID, network, IPC and UTS
              namespaces: no network at all (loopback included), no view of host processes, a root
              file system made of read-only views of the system and interpreter folders plus a private
              tmpfs /tmp; jobs run as an unprivileged uid (or without capabilities) with rlimits.
  rlimits     rlimits, a scrubbed environment, a private working folder, an unprivileged uid where
              possible; the program can still read host files and use the network.
  none        only the time limits and the clean-up of leftover processes.
  auto        the strongest mode this kernel allows (a warning, once, when that is not namespaces).

Two kinds of jobs:
  PythonJob   Python source stages run in one namespace inside a forked child of the worker's
              zygote (no interpreter start, no imports per job), optionally followed by a checker
              function shipped to the worker once. It passes only when the checker (or last stage)
              ran to its end, proven by a per-job secret token written to a private pipe.
  CommandJob  commands (compile, then run, ...) executed one after the other in a private folder
              seeded with files; each step reports exit code, signal, time and capped output.

`SandboxPool(workers=N)` runs jobs in parallel and returns futures; `run_python` and `run_command`
run a single job in a short-lived pool. The in-sandbox half lives in codelm/evaluate/zygote.py.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import errno
import itertools
import json
import marshal
import os
import queue
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from codelm.errors import CodelmError
from codelm.evaluate import zygote as _zygote

ZYGOTE_SCRIPT = Path(_zygote.__file__).resolve()
MODES = ("auto", "none", "rlimits", "namespaces")
SAMPLE_ID = 65534  # "nobody": the uid jobs drop to when the harness runs as root
KEEP_VALUES = 16  # values (a task's inputs or expected outputs) a worker keeps between jobs
PIPELINE = 2  # jobs sent ahead to each worker

# Host paths visible (read-only) inside the namespaces sandbox, besides the interpreter's own
# folders, which the zygote adds itself. /etc is exposed file by file: no host secrets.
SYSTEM_PATHS = (
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
    "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
    "/etc/timezone", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/mime.types",
)

# Imported once per worker, so jobs that use them pay nothing. Kept short: every module makes the
# zygote, and so each fork, bigger. (numpy is left out: its thread pools do not survive a fork.)
PRELOAD = ("bisect", "collections", "copy", "functools", "hashlib", "heapq", "itertools", "math", "operator",
           "re", "string", "typing")


@dataclass
class Limits:
    """Resource limits of one job (or one command step)."""

    cpu_seconds: float = 3.0  # RLIMIT_CPU (rounded up to whole seconds); exceeding it is a timeout
    wall_seconds: float | None = None  # default: 3 x cpu_seconds + 2, for programs that sleep or wait
    memory_mb: int | None = 2048  # address space beyond what the process maps at start (None: no limit)
    processes: int | None = 64  # RLIMIT_NPROC (per sandbox user)
    file_size_mb: int | None = 64  # RLIMIT_FSIZE
    open_files: int | None = 256  # RLIMIT_NOFILE
    output_bytes: int = 0  # stdout and stderr kept per stream; 0 sends them to /dev/null
    env: dict = field(default_factory=dict)  # added to the scrubbed environment

    def to_json(self) -> dict:
        return {"cpu_seconds": self.cpu_seconds,  # written out: dataclasses.asdict costs more than the rest of a frame
                "wall_seconds": 3 * self.cpu_seconds + 2 if self.wall_seconds is None else self.wall_seconds,
                "memory_mb": self.memory_mb, "processes": self.processes, "file_size_mb": self.file_size_mb,
                "open_files": self.open_files, "output_bytes": self.output_bytes, "env": dict(self.env)}


@dataclass
class SandboxConfig:
    mode: str = "auto"
    tmp_size_mb: int = 256  # the private /tmp (namespaces mode): filling it is all a job can do to a disk
    extra_paths: tuple[str, ...] = ()  # more host paths to expose read-only (compilers, runtimes)
    preload: tuple[str, ...] = PRELOAD


@dataclass
class PythonJob:
    # (filename, source) compiled separately and run in one namespace, in order; a third element True
    # marks a trusted stage (a benchmark's own test), which the worker compiles once and reuses.
    stages: list[tuple]
    limits: Limits = field(default_factory=Limits)
    checker: dict | None = None  # {"module": key, "function": name, "args": {name: value or {"$ref": key}}}
    needs: tuple[str, ...] = ()  # keys of definitions (modules, values) the job uses
    files: dict | None = None  # {relative path: {"text": str} | {"base64": str}} put in the working folder
    int_max_str_digits: int | None = None
    result_limit: int = 1 << 20  # bytes of checker result accepted from the child


@dataclass
class CommandStep:
    argv: list[str]
    limits: Limits = field(default_factory=lambda: Limits(output_bytes=1 << 16))


@dataclass
class CommandJob:
    steps: list[CommandStep]
    files: dict | None = None


@dataclass
class PingJob:
    """Asks a worker how many processes its sandbox holds besides the zygote."""


@dataclass
class RunResult:
    """Outcome of a PythonJob, or of one step of a CommandJob."""

    status: str  # "passed" | "failed" | "timed out" (Python); "ok" | "failed" | "timed out" (command)
    reason: str
    exit_code: int | None = None
    signal: int | None = None
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    max_rss_mb: float = 0.0
    stdout: str = ""
    stderr: str = ""
    result: object = None  # what the checker returned (Python jobs that passed)
    milestones: dict = field(default_factory=dict)  # checker progress reported before the end

    @property
    def passed(self) -> bool:
        return self.status in ("passed", "ok")

    @property
    def timed_out(self) -> bool:
        return self.status == "timed out"


@dataclass
class Isolation:
    mode: str
    user_namespace: bool = False
    pid_namespace: bool = False
    net_namespace: bool = False
    mount_namespace: bool = False
    proc: bool = False
    sample_user: str = ""
    notes: list = field(default_factory=list)


class SandboxError(CodelmError):
    """The sandbox could not be started, or a worker died."""


class WorkerDied(Exception):
    pass


# ----------------------------------------------------------------------------- warnings
_warned: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(f"codelm sandbox: warning: {message}", file=sys.stderr, flush=True)


def describe_weakness(isolation: Isolation) -> list[str]:
    """What this isolation does not give, relative to the namespaces sandbox."""
    if isolation.mode == "none":
        return ["no isolation: programs run with your user's rights, network and files (only time limits apply)"]
    if isolation.mode == "rlimits":
        return ["no namespaces: programs can read host files your user can read, use the network and see host "
                "processes; only rlimits, a scrubbed environment and a private folder apply"] + list(isolation.notes)
    return list(isolation.notes)


# ----------------------------------------------------------------------------- framing (harness side)
def _frame_bytes(frame: dict, raw: bytes = b"") -> bytes:
    """A frame; `raw` bytes follow it as they are when the frame says {"raw": len(raw)} (a value's marshal)."""
    data = json.dumps(frame, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return struct.pack(">I", len(data)) + data + raw


# ----------------------------------------------------------------------------- one worker
class Worker:
    """One zygote process (and, in namespaces mode, its namespaces)."""

    def __init__(self, config: SandboxConfig, mode: str):
        self.config = config
        self.mode = mode
        self.defined: dict[str, str] = {}  # key -> kind, oldest use first
        self.stage_dir = tempfile.mkdtemp(prefix="codelm-sandbox-")
        self.stderr = tempfile.TemporaryFile()
        zygote_config = {
            "mode": mode,
            "stage_dir": self.stage_dir,
            "expose": [p for p in list(SYSTEM_PATHS) + list(config.extra_paths) if os.path.lexists(p)],
            "tmp_size_mb": config.tmp_size_mb,
            "sample_id": SAMPLE_ID if os.getuid() == 0 else None,
            "preload": list(config.preload),
        }
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "MALLOC_ARENA_MAX": "2",
               "PYTHONDONTWRITEBYTECODE": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-I", str(ZYGOTE_SCRIPT), json.dumps(zygote_config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env, cwd="/",
            start_new_session=True, bufsize=0)
        # Both pipes are pumped together (see send): a big job frame going in while a big answer
        # comes out must not leave each side waiting for the other to read.
        self.inbox = bytearray()
        os.set_blocking(self.process.stdin.fileno(), False)
        try:
            hello = self.receive(time.monotonic() + 120)
        except WorkerDied as e:
            self.close()
            raise SandboxError(f"sandbox worker did not start ({e}): {self.stderr_tail()}") from None
        if not hello.get("ok"):
            self.close()
            raise SandboxError(hello.get("error", "sandbox worker failed to start"))
        self.isolation = Isolation(**hello["isolation"])

    def stderr_tail(self, limit: int = 2000) -> str:
        try:
            self.stderr.seek(0)
            return self.stderr.read().decode("utf-8", "replace")[-limit:].strip() or "(no output)"
        except (OSError, ValueError):
            return "(stderr unavailable)"

    def send(self, frame: dict, raw: bytes = b"") -> None:
        """Write a frame, reading answers into the inbox meanwhile (the zygote may be writing one)."""
        data = memoryview(_frame_bytes(frame, raw))
        stdin, stdout = self.process.stdin.fileno(), self.process.stdout.fileno()
        while data:
            readable, writable, _ = select.select([stdout], [stdin], [], 60)
            if readable:
                self._read_some()
            if writable:
                try:
                    data = data[os.write(stdin, data[:1 << 20]):]
                except BlockingIOError:
                    continue
                except OSError as e:
                    raise WorkerDied(f"cannot send a job: {e}") from None

    def receive(self, deadline: float) -> dict:
        """The next answer frame, waiting until `deadline` at most."""
        while True:
            if len(self.inbox) >= 4:
                (length,) = struct.unpack(">I", self.inbox[:4])
                if len(self.inbox) >= 4 + length:
                    frame = json.loads(self.inbox[4:4 + length])
                    del self.inbox[:4 + length]
                    return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerDied("no answer in time")
            if select.select([self.process.stdout.fileno()], [], [], remaining)[0]:
                self._read_some()

    def _read_some(self) -> None:
        chunk = os.read(self.process.stdout.fileno(), 1 << 20)
        if not chunk:
            raise WorkerDied(f"worker exited: {self.stderr_tail(500)}")
        self.inbox += chunk

    def request(self, frame: dict, timeout: float) -> dict:
        """Send one job and wait for its answer (only when nothing else is outstanding)."""
        self.send(frame)
        return self.receive(time.monotonic() + timeout)

    def use(self, keys, definitions: dict, keep_values: int) -> None:
        """Make sure the worker holds `keys`, forgetting the least recently used values beyond `keep_values`.

        Values can be large (a task's expected outputs), and a zygote's size is paid at every fork.
        Definitions are not answered: the zygote handles frames in order, so a job sent after them sees them."""
        for key in keys:
            if key in self.defined:
                self.defined[key] = self.defined.pop(key)  # most recently used last
            else:
                kind, payload = definitions[key]
                if kind == "value":  # marshal bytes, sent raw after the frame: no base64, no JSON string
                    self.send({"op": "put", "key": key, "kind": kind, "raw": len(payload)}, payload)
                else:
                    self.send({"op": "put", "key": key, "kind": kind, "payload": payload})
                self.defined[key] = kind
        values = [k for k, kind in self.defined.items() if kind == "value" and k not in keys]
        excess = len(values) + sum(1 for k in keys if self.defined.get(k) == "value") - keep_values
        if excess > 0:
            dropped = values[:excess]
            self.send({"op": "drop", "keys": dropped})
            for key in dropped:
                del self.defined[key]

    def host_pids(self) -> list[int]:
        """Host pids of this worker's processes (boot, holder, zygote); for tests and diagnostics."""
        pids, frontier = [self.process.pid], [self.process.pid]
        while frontier:
            pid = frontier.pop()
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                children = []
            pids.extend(children)
            frontier.extend(children)
        return pids

    def kill(self) -> None:
        """Kill the worker's process group (boot, holder, zygote); its namespace dies with the zygote."""
        try:
            os.killpg(self.process.pid, 9)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        process = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            try:
                process.stdin.close()  # the zygote exits at end of input; as PID 1 it takes the namespace with it
                process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
            if process.poll() is None:
                self.kill()
                process.wait()
        if process is not None:
            for stream in (process.stdin, process.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
        try:
            self.stderr.close()
        except OSError:
            pass
        _remove_stage_dir(self.stage_dir)


def _remove_stage_dir(path: str) -> None:
    for _ in range(100):  # the namespace holding the mount goes away just after its last process
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno == errno.ENOTEMPTY:
                shutil.rmtree(path, ignore_errors=True)  # rlimits mode leaves the work folder of a killed job
                return
            time.sleep(0.01)


def _remove_stale_stage_dirs() -> None:
    """Empty stage folders left by killed runs (rmdir fails on any still in use as a mount point)."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        path = os.path.join(root, name)
        try:
            if name.startswith("codelm-sandbox-") and time.time() - os.stat(path).st_mtime > 600:
                os.rmdir(path)
        except OSError:
            pass


# ----------------------------------------------------------------------------- choosing a mode
_namespaces_error: list[str] = []  # why the namespaces sandbox failed to start in this process, once known


def open_worker(config: SandboxConfig, requested: str) -> Worker:
    """Start a worker in the strongest mode allowed by `requested` ("auto" falls back, with a warning)."""
    if requested not in MODES:
        raise CodelmError(f"unknown sandbox mode {requested!r}; valid: {', '.join(MODES)}")
    if requested in ("auto", "namespaces"):
        if not _namespaces_error:
            try:
                worker = Worker(config, "namespaces")
                for note in worker.isolation.notes:
                    warn_once(f"the namespaces sandbox is weaker than usual here: {note}")
                return worker
            except SandboxError as e:
                _namespaces_error.append(str(e))
        if requested == "namespaces":
            raise SandboxError(f"the namespaces sandbox is not available here: {_namespaces_error[0]}")
        warn_once(f"Linux namespaces are not available here ({_namespaces_error[0]}); falling back to "
                  "rlimits only: programs can read your files and use the network")
        requested = "rlimits"
    worker = Worker(config, requested)
    for note in worker.isolation.notes:
        warn_once(note)
    return worker


_namespaces_ok: list[bool] = []


def namespaces_available() -> tuple[bool, str]:
    """Whether the namespaces sandbox starts here, and why not (for tests that must skip)."""
    if not _namespaces_ok:
        try:
            open_worker(SandboxConfig(), "namespaces").close()
            _namespaces_ok.append(True)
        except SandboxError as e:
            return False, str(e)
    return True, ""


# ----------------------------------------------------------------------------- the pool
RETRY_PRIORITY = float("inf")  # a job handed back by a dead worker goes first


class _JobQueue:
    """The pool's queue: jobs by priority (highest first, then FIFO); None (stop) after every job."""

    def __init__(self):
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._count = itertools.count()

    def put(self, item, priority: float = 0.0) -> None:
        key = (1, 0.0) if item is None else (0, -float(priority))
        self._queue.put((key, next(self._count), item))

    def get(self, block: bool = True):
        return self._queue.get(block=block)[2]

    def get_nowait(self):
        return self._queue.get_nowait()[2]


class SandboxPool:
    """N workers running jobs in parallel. Use as a context manager, or call close()."""

    def __init__(self, workers: int = 2, config: SandboxConfig | None = None, mode: str | None = None):
        self.config = config or SandboxConfig()
        _remove_stale_stage_dirs()
        first = open_worker(self.config, mode or self.config.mode)  # fails here, not in a thread
        self.mode, self.isolation = first.mode, first.isolation
        self.definitions: dict[str, tuple[str, object]] = {}
        self.jobs = _JobQueue()
        self.workers: list[Worker | None] = [None] * max(1, int(workers))
        self.threads = [threading.Thread(target=self._serve, args=(i,), daemon=True, name=f"sandbox-{i}")
                        for i in range(len(self.workers))]
        self.closed = self.threads_stopped = False
        self.workers[0] = first
        for thread in self.threads:
            thread.start()

    # ------------------------------------------------------------------ public API
    def define_module(self, key: str, source: str) -> None:
        """Ship Python source to every worker once; checkers refer to it by `key`."""
        self.definitions[key] = ("module", source)

    def define_value(self, key: str, value, packed: bool = False) -> None:
        """Ship a value (tuples, sets, bytes kept) to every worker once; checker args refer to it as {"$ref": key}.

        `packed`: `value` is already packed: the text of zygote.pack (a reference job's checker
        result) or marshal bytes (the reference cache)."""
        if not packed:
            value = marshal.dumps(value)
        elif isinstance(value, str):
            value = base64.b64decode(value)
        self.definitions[key] = ("value", value)

    def submit(self, job: PythonJob | CommandJob, priority: float = 0.0) -> concurrent.futures.Future:
        """Queue a job; waiting jobs start highest `priority` first, in submission order among equals
        (a scorer gives its longest jobs the highest, so the workers finish together)."""
        if self.closed:
            raise RuntimeError("the sandbox pool is closed")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.jobs.put((job, future), priority)
        return future

    def run(self, job: PythonJob | CommandJob):
        return self.submit(job).result()

    def worker_processes(self) -> list[list[int]]:
        return [w.host_pids() if w is not None else [] for w in self.workers]

    def ping(self) -> dict:
        """Ask a worker how many processes its sandbox holds besides the zygote (for one-worker pools)."""
        return self.submit(PingJob()).result()

    def close(self) -> None:
        if self.threads_stopped:
            return
        self.closed = self.threads_stopped = True
        for _ in self.threads:
            self.jobs.put(None)
        for thread in self.threads:
            thread.join()
        for worker in self.workers:
            if worker is not None:
                worker.close()
        while True:  # jobs handed back by a dying worker after the threads stopped
            try:
                item = self.jobs.get_nowait()
            except queue.Empty:
                break
            if item is not None and not item[1].done():
                item[1].set_exception(SandboxError("the sandbox pool was closed before this job ran"))

    def terminate(self) -> None:
        """Stop now (an interrupt, an error): kill the workers, whatever they are running."""
        self.closed = True
        for worker in list(self.workers):
            if worker is not None:
                worker.kill()  # its thread sees the worker die and fails the jobs it had

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:
            self.terminate()
        self.close()

    # ------------------------------------------------------------------ worker threads
    def _serve(self, index: int) -> None:
        try:
            self._serve_jobs(index)
        finally:
            # Closed by this thread: a worker it started has PR_SET_PDEATHSIG tied to it, and would be
            # killed, not closed, when the thread ends (its processes then escape our CPU accounting).
            worker = self.workers[index]
            if worker is not None:
                worker.close()

    def _serve_jobs(self, index: int) -> None:
        """Feed one worker. Up to PIPELINE jobs are sent ahead, so the zygote starts the next job as
        soon as one ends instead of waiting for this thread to be scheduled (on a busy machine that
        wait, not the work, would set the pace)."""
        outstanding: collections.deque = collections.deque()  # [job, future, attempts, timeout] in send order
        stopping = False
        last_answer = time.monotonic()
        while True:
            if stopping and not outstanding:
                return
            if self.closed and self.workers[index] is None:  # terminated: fail what is left
                for job, future, _, _ in outstanding:
                    future.set_exception(SandboxError("the sandbox pool was stopped"))
                outstanding.clear()
                if stopping:
                    return
                item = self.jobs.get()
                if item is None:
                    return
                item[1].set_exception(SandboxError("the sandbox pool was stopped"))
                continue
            try:
                worker = self._worker(index)
            except SandboxError as e:
                item = self.jobs.get()
                if item is None:
                    return
                item[1].set_exception(e)
                continue
            while not stopping and len(outstanding) < PIPELINE:
                try:
                    item = self.jobs.get(block=not outstanding)
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                job, future = item[0], item[1]
                attempts = item[2] if len(item) > 2 else 0
                if attempts == 0 and not future.set_running_or_notify_cancel():
                    continue
                try:
                    frame, timeout = self._frame(job)
                    worker.use(getattr(job, "needs", ()), self.definitions, keep_values=KEEP_VALUES)
                    worker.send(frame)
                except WorkerDied:
                    outstanding.append([job, future, attempts, 0])
                    self._restart(index, outstanding)
                    break
                except BaseException as e:  # noqa: BLE001 - a malformed job: handed to its caller
                    future.set_exception(e)
                    continue
                if not outstanding:
                    last_answer = time.monotonic()
                outstanding.append([job, future, attempts, timeout])
            if not outstanding or self.workers[index] is None:
                continue
            job, future, attempts, timeout = outstanding[0]
            try:
                answer = worker.receive(max(last_answer, time.monotonic() - timeout) + timeout)
            except WorkerDied:
                self._restart(index, outstanding)
                continue
            outstanding.popleft()
            last_answer = time.monotonic()
            try:
                future.set_result(self._result(job, answer))
            except BaseException as e:  # noqa: BLE001
                future.set_exception(e)

    def _restart(self, index: int, outstanding) -> None:
        """The worker died: replace it and hand its jobs back, the running one (first) with one more attempt.

        A job cannot kill the zygote in namespaces mode; this is a harness-side crash or, in rlimits
        mode, a hostile job. A job whose worker dies twice fails."""
        worker = self.workers[index]
        tail = worker.stderr_tail() if worker is not None else ""
        if worker is not None:
            worker.close()
        self.workers[index] = None
        if self.closed:
            return  # terminated: _serve fails the outstanding jobs
        for position, (job, future, attempts, _) in enumerate(outstanding):
            attempts += position == 0
            if attempts < 2:
                self.jobs.put((job, future, attempts), RETRY_PRIORITY)
            elif isinstance(job, PythonJob):
                future.set_result(RunResult(status="failed", reason="sandbox worker died"))
            else:
                future.set_exception(SandboxError(f"sandbox worker died: {tail}"))
        outstanding.clear()

    def _worker(self, index: int) -> Worker:
        if self.workers[index] is None:
            self.workers[index] = Worker(self.config, self.mode)
        return self.workers[index]

    @staticmethod
    def _frame(job) -> tuple[dict, float]:
        """The protocol frame of a job, and how long its answer may take."""
        if isinstance(job, PingJob):
            return {"op": "ping"}, 30.0
        if isinstance(job, PythonJob):
            limits = job.limits.to_json()
            frame = {"op": "python", "stages": [list(s) for s in job.stages], "limits": limits,
                     "checker": job.checker, "files": job.files, "int_max_str_digits": job.int_max_str_digits,
                     "result_limit": job.result_limit}
            return frame, limits["wall_seconds"] + 60
        steps = [{"argv": list(s.argv), "limits": s.limits.to_json()} for s in job.steps]
        return {"op": "command", "steps": steps, "files": job.files}, sum(s["limits"]["wall_seconds"] for s in steps) + 60

    @staticmethod
    def _result(job, answer: dict):
        if "error" in answer:
            raise SandboxError(answer["error"])
        if isinstance(job, PingJob):
            return answer
        if isinstance(job, PythonJob):
            return _run_result(answer)
        return [_run_result(step) for step in answer["steps"]]


def _run_result(answer: dict) -> RunResult:
    if "status" not in answer:
        raise WorkerDied(f"malformed answer: {str(answer)[:200]}")
    keys = RunResult.__dataclass_fields__
    return RunResult(**{k: v for k, v in answer.items() if k in keys})


# ----------------------------------------------------------------------------- one-off helpers
def run_python(source: str | list[tuple[str, str]], limits: Limits | None = None, mode: str = "auto",
               files: dict | None = None) -> RunResult:
    """Run Python source (or (filename, source) stages) once in a fresh sandbox; passes if it runs to its end."""
    stages = [("<program>", source)] if isinstance(source, str) else list(source)
    with SandboxPool(workers=1, mode=mode) as pool:
        return pool.run(PythonJob(stages=stages, limits=limits or Limits(output_bytes=1 << 16), files=files))


def run_command(argv: list[str] | list[CommandStep], files: dict | None = None, limits: Limits | None = None,
                mode: str = "auto", extra_paths: tuple[str, ...] = ()) -> list[RunResult]:
    """Run a command (or several steps) in a private folder seeded with `files`, one result per step run.

    `files` maps relative paths to text (str) or bytes."""
    if argv and isinstance(argv[0], CommandStep):
        steps = list(argv)
    else:
        steps = [CommandStep(argv=list(argv), limits=limits or Limits(output_bytes=1 << 16))]
    encoded = None
    if files is not None:
        encoded = {name: {"base64": base64.b64encode(data).decode()} if isinstance(data, bytes) else {"text": data}
                   for name, data in files.items()}
    with SandboxPool(workers=1, mode=mode, config=SandboxConfig(extra_paths=tuple(extra_paths))) as pool:
        return pool.run(CommandJob(steps=steps, files=encoded))
