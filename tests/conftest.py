"""Shared fixtures: tiny configs and a small cached corpus so the suite stays fast on 2 cores."""

from __future__ import annotations

import pytest
import torch

from trainnet.config import RunConfig, load_config
from trainnet.data.corpus import Corpus, load_corpus

torch.set_num_threads(1)  # deterministic, and fair to the other test processes on a 2-core box


@pytest.fixture(scope="session")
def small_corpus() -> Corpus:
    """About 1 MB of the standard library, cut into 32 KB shards (every 8th held out)."""
    return load_corpus(None, shard_bytes=32_768, val_every=8, max_bytes=1_048_576)


def tiny_config(**overrides: object) -> RunConfig:
    sets = [
        "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
        "data.shard_bytes=32768", "data.val_every=8", "data.max_bytes=1048576",
        "inner.batch_size=4", "consensus.h=5", "consensus.quorum=2", "consensus.lease_s=20.0",
        "consensus.grace_s=5.0", "sim.workers=4", "sim.tokens=20000", "sim.eval_every=2",
        "sim.eval_batches=2", "sim.eval_batch_size=8", "sim.step_s=1.0",
    ]
    sets += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(None, sets)


@pytest.fixture
def tiny_cfg() -> RunConfig:
    return tiny_config()


@pytest.fixture
def make_tiny_config():
    """tiny_config itself, for tests that build several variants."""
    return tiny_config
