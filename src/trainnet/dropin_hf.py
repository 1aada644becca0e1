"""A Hugging Face `Trainer` as one TrainNet node: the Trainer keeps its loop, data, optimizer and schedule;
TrainNet loads the global model at each task's start and delivers the pseudo-gradient after its H steps.

    part = trainnet.Participant(url, model=None, state_dir="node0", follow_task_lr=False, clip_grad=False)
    trainer = Trainer(model=part.model.hf, args=args, train_dataset=ds,            # a run of spec "hf"
                      callbacks=[TrainNetCallback(part)])
    trainer.train()                                                                # stops when the run is done

Your data, your optimizer: the updates cannot be recomputed from the tasks' public inputs, so use it with runs
that do not verify by recomputation (`--verify-rate 0`), e.g. fine-tuning among trusted machines.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from trainnet.dropin import Participant


class TrainNetCallback(TrainerCallback):
    def __init__(self, participant: Participant) -> None:
        self.participant = participant

    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        p = self.participant
        if optimizer is not None and p.user_optimizer is None:
            p.user_optimizer = p.optimizer = optimizer  # the Trainer's: its state is reset at every task
        if not p.begin():
            control.should_training_stop = True

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        p = self.participant
        p.after_step()
        if p.done:
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.participant.close()
