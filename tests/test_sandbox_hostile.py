"""Hostile programs, run only inside the namespaces sandbox: each is judged not passed, the host
is unharmed, and the run finishes. Skipped (with the reason) where the kernel forbids namespaces."""

import json
import os
import socket
import sys

import pytest

from codelm.evaluate.sandbox import Limits, PythonJob, SandboxPool, namespaces_available

NAMESPACES, WHY_NOT = namespaces_available()
pytestmark = [pytest.mark.hostile,
              pytest.mark.skipif(not NAMESPACES, reason=f"namespaces sandbox unavailable here: {WHY_NOT}")]

SECRET = "codelm-hostile-secret-7f3a"
LIMITS = Limits(cpu_seconds=1, wall_seconds=3, output_bytes=4096)
# The test stage every hostile program would have to get past; a pass needs it to finish.
TEST_STAGE = ("<test>", "assert stolen == EXPECTED, 'the attack failed'\n", True)


@pytest.fixture(scope="module")
def pool():
    os.environ["CODELM_HOSTILE_SECRET"] = SECRET  # in the harness: must not reach the program
    try:
        with SandboxPool(workers=1, mode="namespaces") as p:
            yield p
    finally:
        del os.environ["CODELM_HOSTILE_SECRET"]


def attack(pool, source, expected=SECRET, limits=LIMITS):
    """Run `source` (which should set `stolen`) then a test asserting the attack worked."""
    stages = [("<solution>", source), ("<expected>", f"EXPECTED = {expected!r}\n", True), TEST_STAGE]
    return pool.run(PythonJob(stages=stages, limits=limits))


def processes_in_namespace_of(pool):
    """Host pids in the worker's PID namespace (the zygote included)."""
    zygote = pool.worker_processes()[0][-1]
    namespace = os.readlink(f"/proc/{zygote}/ns/pid")
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") == namespace:
                found.append(int(pid))
        except OSError:
            pass
    return found


def assert_sandbox_clean(pool):
    assert pool.ping()["processes"] == 0
    assert len(processes_in_namespace_of(pool)) == 1  # only the zygote


def test_reading_a_host_file(pool, tmp_path):
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o644)
    result = attack(pool, f"stolen = open({str(secret_file)!r}).read()\n")
    assert result.status == "failed" and "FileNotFoundError" in result.reason
    for path in ("/etc/shadow", "/root/.bashrc", str(tmp_path), os.path.expanduser("~")):
        probe = attack(pool, f"import os\nstolen = os.listdir({path!r}) if os.path.isdir({path!r}) "
                             f"else open({path!r}).read()\n", expected="anything")
        assert probe.status == "failed"


def test_reading_an_environment_secret(pool):
    result = attack(pool, "import os, glob\n"
                          "stolen = os.environ.get('CODELM_HOSTILE_SECRET')\n"
                          "for f in glob.glob('/proc/*/environ'):\n"
                          "    try:\n"
                          f"        if {SECRET!r}.encode() in open(f, 'rb').read(): stolen = {SECRET!r}\n"
                          "    except OSError:\n"
                          "        pass\n")
    assert result.status == "failed"


def test_connecting_to_a_host_listener(pool):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        result = attack(pool, "import socket\n"
                              f"s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                              "s.sendall(b'hello')\n"
                              f"stolen = {SECRET!r}\n")
        assert result.status == "failed" and ("OSError" in result.reason or "Error" in result.reason)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
        dns = attack(pool, "import socket\nsocket.getaddrinfo('example.com', 80)\n"
                           f"stolen = {SECRET!r}\n")
        assert dns.status == "failed"
    finally:
        listener.close()


@pytest.mark.parametrize("exit_code", [
    "import os\nos._exit(0)\n",
    "import sys\nsys.exit(0)\n",
    "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
])
def test_exiting_before_the_asserts(pool, exit_code):
    assert attack(pool, exit_code).status == "failed"


def test_printing_fake_verdicts(pool):
    fake = json.dumps({"token": "0" * 32, "done": True, "result": None})
    result = attack(pool, "import os, sys\n"
                          "print('passed'); print(" + repr(fake) + ")\n"
                          "for fd in range(1, 64):\n"
                          "    try:\n"
                          "        os.write(fd, (" + repr(fake) + " + '\\n').encode())\n"
                          "    except OSError:\n"
                          "        pass\n"
                          "sys.stdout.flush()\n"
                          "os._exit(0)\n")
    assert result.status == "failed"


def test_fork_bomb(pool):
    result = attack(pool, "import os\n"
                          "while True:\n"
                          "    try:\n"
                          "        os.fork()\n"
                          "    except OSError:\n"
                          "        pass\n",
                    limits=Limits(cpu_seconds=1, wall_seconds=3))
    assert result.status in ("failed", "timed out")
    assert_sandbox_clean(pool)


def test_memory_bomb(pool):
    result = attack(pool, "blocks = []\nwhile True:\n    blocks.append(bytearray(100 * 2**20))\n",
                    limits=Limits(cpu_seconds=10, wall_seconds=30, memory_mb=512))
    assert result.status == "failed" and "MemoryError" in result.reason


def test_filling_the_disk(pool):
    before = os.statvfs("/tmp").f_bavail
    result = attack(pool, "import os\n"
                          "chunk = b'x' * 2**20\n"
                          "for path in ('big', '/tmp/big', '/dev/shm/big'):\n"
                          "    try:\n"
                          "        with open(path, 'wb') as f:\n"
                          "            while True:\n"
                          "                f.write(chunk)\n"
                          "    except OSError as e:\n"
                          "        print(path, e.errno)\n",
                    limits=Limits(cpu_seconds=5, wall_seconds=10, output_bytes=4096))
    assert result.status == "failed"
    assert result.stdout.count("\n") == 3  # each write ended in an error (EFBIG or ENOSPC)
    assert before - os.statvfs("/tmp").f_bavail < (64 << 20) // os.statvfs("/tmp").f_frsize


def test_flooding_stdout(pool):
    result = attack(pool, "import sys\nwhile True:\n    sys.stdout.write('y' * 65536)\n",
                    limits=Limits(cpu_seconds=1, wall_seconds=3, output_bytes=1000))
    assert result.status == "timed out" and len(result.stdout) == 1000


def test_ignoring_signals_in_an_endless_loop(pool):
    result = attack(pool, "import signal\n"
                          "for s in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, signal.SIGHUP):\n"
                          "    signal.signal(s, signal.SIG_IGN)\n"
                          "signal.alarm(1)\n"
                          "while True:\n"
                          "    pass\n")
    assert result.status == "timed out"


def test_a_detached_child_does_not_survive(pool):
    result = attack(pool, "import os, time\n"
                          "if os.fork() == 0:\n"
                          "    os.setsid()\n"
                          "    if os.fork() == 0:\n"
                          "        time.sleep(1000)\n"
                          "    os._exit(0)\n"
                          "time.sleep(0.2)\n")
    assert result.status == "failed"
    assert_sandbox_clean(pool)


def test_killing_the_parent(pool):
    zygote = pool.worker_processes()[0][-1]
    result = attack(pool, "import os, signal\n"
                          "for target in (os.getppid(), 1, -1):\n"
                          "    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGSTOP):\n"
                          "        try:\n"
                          "            os.kill(target, sig)\n"
                          "        except OSError:\n"
                          "            pass\n")
    assert result.status == "failed"
    assert pool.worker_processes()[0][-1] == zygote  # the same zygote still serves
    assert attack(pool, f"stolen = {SECRET!r}\n").status == "passed"  # and judges normally


def test_deleting_or_overwriting_files_outside_its_folder(pool, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("intact")
    victim.chmod(0o666)
    package_dir = os.path.dirname(os.__file__)
    result = attack(pool, "import os, shutil\n"
                          "hits = []\n"
                          f"for path in ({str(victim)!r}, {package_dir + '/os.py'!r}, '/usr/bin/env', '/etc/passwd'):\n"
                          "    for action in (lambda: open(path, 'w').write('x'), lambda: os.remove(path)):\n"
                          "        try:\n"
                          "            action(); hits.append(path)\n"
                          "        except OSError:\n"
                          "            pass\n"
                          "for folder in (" + repr(sys.prefix) + ", '/usr/lib', '/'):\n"
                          "    try:\n"
                          "        open(os.path.join(folder, 'codelm-was-here'), 'w').write('x'); hits.append(folder)\n"
                          "    except OSError:\n"
                          "        pass\n"
                          "stolen = hits\n",
                    expected=[])
    assert result.status == "passed", result.reason  # every attempt failed, so the list is empty
    assert victim.read_text() == "intact"
    assert not os.path.exists(os.path.join(sys.prefix, "codelm-was-here"))


def test_the_run_finishes_with_hostile_samples_in_codelm_score(tmp_path, data_dir):
    from codelm.evaluate.scorers import score
    from codelm.evaluate.scoring import ScoreOptions

    hostile = [
        "    import os\n    os._exit(0)\n",
        "    import os\n    while True:\n        os.fork()\n",
        "    while True:\n        pass\n",
        "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n",
        "    print('passed')\n    import sys\n    sys.exit(0)\n",
    ]
    samples = tmp_path / "samples.jsonl"
    with open(samples, "w") as f:
        for completion in hostile:
            f.write(json.dumps({"task_id": "HumanEval/0", "completion": completion}) + "\n")
    summary = score("humaneval", samples, None, ScoreOptions(workers=2, timeout=1, sandbox="namespaces", data_dir=data_dir, ks="1", progress=False))
    assert summary["samples"] == len(hostile) and summary["passed"] == 0


def test_creating_namespaces_or_remounting_is_refused(pool):
    before = open("/proc/sys/user/max_user_namespaces").read()
    result = attack(pool, "import ctypes\n"
                          "libc = ctypes.CDLL(None, use_errno=True)\n"
                          "results = [libc.unshare(flag) for flag in (0x10000000, 0x00020000, 0x40000000)]\n"
                          "results.append(libc.mount(b'none', b'/usr', None, 32 | 4096, None))\n"
                          "stolen = 'escaped' if 0 in results else 'refused'\n",
                    expected="refused")
    assert result.status == "passed", result.reason  # every attempt was refused
    assert open("/proc/sys/user/max_user_namespaces").read() == before  # the host's own limit is untouched
