"""A Hugging Face Trainer as one TrainNet node (trainnet.dropin_hf.TrainNetCallback): its own data, optimizer
and schedule; each task starts from the global model; the Trainer stops when the run is done."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainnet.worker.procs import LocalCluster

H, BATCH, SEQ = 5, 4, 32
RUN = f"""name = "hf-callback"
[model]
spec = "hf"
block_size = {SEQ}
[model.hf]
model_type = "gpt2"
n_layer = 1
n_embd = 32
n_head = 2
vocab_size = 256
n_positions = {SEQ}
[data]
shard_bytes = 65536
val_every = 10
max_bytes = 1000000
[inner]
batch_size = {BATCH}
lr = 0.003
[consensus]
h = {H}
quorum = 1
grace_s = 2.0
[sim]
tokens = {2 * H * BATCH * SEQ}
codec = "q4"
"""


class Bytes(torch.utils.data.Dataset):
    """The caller's own data: windows of this file's bytes."""

    def __init__(self) -> None:
        self.data = torch.tensor(list(Path(__file__).read_bytes()), dtype=torch.long)

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        w = self.data[i * 7: i * 7 + SEQ]
        return {"input_ids": w, "labels": w}


def test_trainer_callback_joins_a_run_and_stops_when_it_is_done(tmp_path: Path, wt) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers.Trainer needs it (the `llm` extra does not install it)
    from trainnet.dropin import Participant
    from trainnet.dropin_hf import TrainNetCallback

    (tmp_path / "run.toml").write_text(RUN)
    cl = LocalCluster(tmp_path, tmp_path / "run.toml", workers=0, coordinator_args=["--verify-rate", "0"])
    with cl:
        cl.start_coordinator()
        cl.wait_ready()
        part = Participant(cl.url, state_dir=tmp_path / "node", device="cpu", follow_task_lr=False, clip_grad=False,
                           log=lambda m: None)
        base_v0 = {n: p.detach().clone() for n, p in part.model.named_parameters()}
        args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=1000,
                                              per_device_train_batch_size=BATCH, learning_rate=1e-3,
                                              report_to=[], save_strategy="no", logging_strategy="no",
                                              use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
        trainer = transformers.Trainer(model=part.model.hf, args=args, train_dataset=Bytes(),
                                       callbacks=[TrainNetCallback(part)])
        out = trainer.train()
        assert out.global_step == 2 * H  # two tasks of H steps, then the run was done
        st = cl.status()
        assert st["done"] and st["updates_accepted"] == 2 and st["nodes"] == 1, st
        assert part.done and part.tasks_trained == 2
        # The second task started from a version that includes the first update, not from where the Trainer was.
        assert any(not torch.equal(base_v0[n], p) for n, p in part.model.named_parameters())
