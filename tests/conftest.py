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
