"""Checkpoints carry the model spec; `trainnet sample` reads old and new ones and samples on one thread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from shapes import gpt, llama

from trainnet.model import sample as sample_mod
from trainnet.models import build_model
from trainnet.models.checkpoint import (
    CONFIG_KEY,
    SPEC_KEY,
    CheckpointError,
    checkpoint_metadata,
    load_checkpoint,
)


def _save(model: torch.nn.Module, path: Path, metadata: dict[str, str]) -> None:
    save_file({k: v.detach().contiguous() for k, v in model.named_parameters()}, str(path), metadata=metadata)


def test_new_and_old_checkpoints_load(tmp_path: Path):
    mcfg = gpt()
    model = build_model(mcfg, seed=4)
    _save(model, tmp_path / "new.safetensors", checkpoint_metadata(mcfg, version="7"))
    old_meta = {CONFIG_KEY: json.dumps({k: getattr(mcfg, k) for k in
                                        ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout", "bias")})}
    _save(model, tmp_path / "old.safetensors", old_meta)  # what checkpoints held before model specs
    for name in ("new", "old"):
        loaded, cfg = load_checkpoint(tmp_path / f"{name}.safetensors")
        assert cfg.spec == "gpt-bytes"
        assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), model.parameters(), strict=True))


def test_hf_checkpoint_round_trip_and_byte_sampling_refused(tmp_path: Path):
    mcfg = llama()
    model = build_model(mcfg, seed=1)
    meta = checkpoint_metadata(mcfg)
    assert meta[SPEC_KEY] == "hf"
    _save(model, tmp_path / "m.safetensors", meta)
    loaded, cfg = load_checkpoint(tmp_path / "m.safetensors")
    assert cfg.to_dict() == mcfg.to_dict()
    with pytest.raises(CheckpointError, match="needs a gpt-bytes model"):
        sample_mod.sample_text(loaded, "x", tokens=3)


def test_sampling_a_small_model_uses_one_thread_and_restores(tmp_path: Path, monkeypatch):
    mcfg = gpt()
    _save(build_model(mcfg, seed=0), tmp_path / "m.safetensors", checkpoint_metadata(mcfg))
    seen: list[int] = []
    real = torch.nn.Module.__call__

    def spy(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(self, *args, **kwargs)

    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(torch.nn.Module, "__call__", spy)
        res = CliRunner().invoke(sample_mod.sample_cmd, ["--checkpoint", str(tmp_path / "m.safetensors"),
                                                         "--tokens", "20", "--prompt", "def "])
        assert res.exit_code == 0, res.output
        assert res.output.startswith("def ") and seen and set(seen) == {1}
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(1)  # the suite's setting (tests/conftest.py)
