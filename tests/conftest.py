import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Benchmark data: $CODELM_DATA_DIR (set by .ci/run), else the shared folder beside the checkout.
if not os.environ.get("CODELM_DATA_DIR"):
    _shared = REPO.parent / "shared" / "data"
    if _shared.is_dir():
        os.environ["CODELM_DATA_DIR"] = str(_shared)

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def data_dir():
    d = os.environ.get("CODELM_DATA_DIR")
    if not d or not Path(d).is_dir():
        pytest.skip("benchmark data not found: set CODELM_DATA_DIR")
    return Path(d)



def pytest_sessionfinish(session, exitstatus):
    session.config._codelm_exitstatus = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the process with pytest's status once everything is reported.

    A daemon thread (an HTTP handler, a library's worker) that is inside a torch op when the
    interpreter finalizes is stopped by pthread_exit, whose unwind through torch's C++ frames
    calls std::terminate: "terminate called without an active exception", SIGABRT, after every
    test passed (pytorch#38228, open since 2020). Our own servers drain their generation on
    close; this guards the suite against the rest. Threads still running are named first."""
    import sys
    import threading

    status = getattr(config, "_codelm_exitstatus", None)
    if status is None:
        return
    left = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()
            and not t.daemon]
    if left:
        print(f"non-daemon threads still running at exit: {left}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
