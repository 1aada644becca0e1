"""Make tests/servers (coordinator subprocess, signed HTTP node) and dash_helpers importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def live(tmp_path_factory):
    """A coordinator subprocess on a tiny run with a budget large enough never to finish in these tests."""
    from dash_helpers import LiveRun

    torch.set_num_threads(1)  # 2 shared cores: oversubscribed torch threads make tiny tasks 100x slower
    run = LiveRun(tmp_path_factory.mktemp("live"), tokens=200_000)
    try:
        yield run
    finally:
        run.close()
