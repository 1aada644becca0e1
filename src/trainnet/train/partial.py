"""A task stopped part-way: everything needed to continue it and get bit-for-bit the result it would have had.

    hooks = TaskHooks(on_step=report, should_pause=lambda: stop.is_set())
    out = run_task(model, base, tokens, hp, seed, hooks=hooks)        # a TaskResult, or a Partial if paused
    out.save(path); Partial.load(path)                                # safetensors + a JSON header, no pickle
    run_task(model, base, tokens, hp, seed, hooks=TaskHooks(resume=Partial.load(path)))   # continues

A task's result is a public function of its inputs (the verifier recomputes it), so a resumed task must end
exactly where an uninterrupted one would: the partial state holds the local parameters, the AdamW moments and
step counts, the batch sampler's generator state and the losses so far (tests/train check the equality).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

ParamDict = dict[str, torch.Tensor]


@dataclass
class Partial:
    task_id: str
    step: int  # steps done
    params: ParamDict  # the local parameters after `step` steps
    optimizer: dict[str, Any]  # AdamW's state_dict (tensors inside "state")
    generator: torch.Tensor  # the batch sampler's RNG state
    losses: list[float]
    elapsed_s: float
    meta: dict[str, Any] = field(default_factory=dict)  # the worker's own bookkeeping (lease, run, base)

    def save(self, path: Path) -> None:
        tensors = {f"param/{k}": v.detach().cpu().contiguous() for k, v in self.params.items()}
        state = self.optimizer.get("state", {})
        for idx, st in state.items():
            for k, v in st.items():
                tensors[f"opt/{idx}/{k}"] = (v if isinstance(v, torch.Tensor) else torch.tensor(v)).cpu().contiguous()
        tensors["generator"] = self.generator.cpu().contiguous()
        header = {"task_id": self.task_id, "step": self.step, "losses": self.losses, "elapsed_s": self.elapsed_s,
                  "param_groups": self.optimizer.get("param_groups", []), "meta": self.meta}
        tmp = Path(path).with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"trainnet_partial": json.dumps(header)})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Partial:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})["trainnet_partial"])
        tensors = load_file(str(path))
        params = {k[6:]: v for k, v in tensors.items() if k.startswith("param/")}
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("opt/"):
                _, idx, name = k.split("/", 2)
                state.setdefault(int(idx), {})[name] = v
        return cls(header["task_id"], int(header["step"]), params,
                   {"state": state, "param_groups": header["param_groups"]}, tensors["generator"],
                   list(header["losses"]), float(header["elapsed_s"]), header.get("meta", {}))


@dataclass
class TaskHooks:
    # After each step: (steps done, that step's loss as a detached 0-d tensor; float() of it waits for the device).
    on_step: Callable[[int, torch.Tensor], None] | None = None
    should_pause: Callable[[], bool] | None = None  # checked after each step: True stops with a Partial
    resume: Partial | None = None  # continue this partial task instead of starting from the base
    task_id: str = ""
