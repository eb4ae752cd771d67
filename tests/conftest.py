import os
from pathlib import Path

# Idle OpenMP threads must not spin: CI machines have 2 cores and some tests run several processes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Tests never touch the internet: a release name never triggers a download (tests/test_hub.py lifts
# this for its loopback stand-in of Google Drive only).
os.environ["POSTER_OFFLINE"] = "1"
# The suite runs as on a CPU without bf16 instructions whatever the machine (poster.precision reads
# this before /proc/cpuinfo), so "auto" means fp32 in every test and subprocess alike; the tests of
# the policy fake each hardware class themselves (tests/test_precision.py).  POSTER_CPU_BF16=1 runs
# the whole suite as on an AMX CPU.
os.environ.setdefault("POSTER_CPU_BF16", "0")

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (the shared reference material sits beside the checkout)")
    return SHARED


@pytest.fixture(scope="session")
def fer2013_dir(shared_dir) -> Path:
    path = shared_dir / "data" / "fer2013"
    if not (path / "train").is_dir():
        pytest.skip(f"{path} is absent: the FER2013 faces are needed for this test")
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Compact models on a shared 2-core machine: one intra-op thread is several times faster
    (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
