"""Will a task fit this node's memory? The worker asks before it trains its first task of a shape.

    fit = FitCheck("cuda", memory_gb=None)            # None: the device's own memory (or --memory-gb)
    msg = fit.refusal(model_cfg, task)                 # None if it fits, else one line naming model, need, have

The need is models/memory.py's plan_memory, an estimate from formulas (weights, AdamW states, activations at
the task's batch x seq_len and precision, plus what the host keeps for the pseudo-gradient). On a CUDA device
the device part is compared with the GPU's total memory; on a CPU, where both live in the same RAM, device
tensors + host copies are compared with the memory available now (MemAvailable), less a 10% margin.
"""

from __future__ import annotations

from typing import Any

import torch

from trainnet.models.config import ModelConfig
from trainnet.models.memory import GIB, SLACK, MemoryPlan, ModelShape, plan_memory
from trainnet.train.local import use_bf16


def available_memory(device: str) -> tuple[float, str]:
    """(bytes, what) of the memory a task on `device` can use: a CUDA device's total memory, else the RAM
    available now (/proc/meminfo MemAvailable, else physical pages)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        total = torch.cuda.mem_get_info(index)[1]
        return float(total), f"{torch.cuda.get_device_name(index)} (cuda:{index})"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(int(line.split()[1]) * 1024), "available RAM"
    except OSError:
        pass
    import os

    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "physical RAM"


def need_bytes(plan: MemoryPlan, device: str) -> float:
    """Bytes one task needs on `device` (estimate): the plan's device total on a GPU; on a CPU its tensors with
    the allocator slack plus the host copies (no CUDA context)."""
    if torch.device(device).type == "cuda":
        return plan.device_bytes
    return plan.tensor_bytes * (1 + SLACK) + plan.host_bytes


class FitCheck:
    def __init__(self, device: str, memory_gb: float | None = None, ranks: int = 1) -> None:
        self.device, self.memory_gb, self.ranks = device, memory_gb, max(1, ranks)
        self._seen: dict[tuple, str | None] = {}

    def capacity(self) -> tuple[float, str]:
        if self.memory_gb is not None:
            return self.memory_gb * GIB, f"{self.memory_gb:g} GiB (--memory-gb) on {self.device}"
        nbytes, what = available_memory(self.device)
        if torch.device(self.device).type != "cuda":
            nbytes *= 0.9  # leave the rest of the machine some room
        return nbytes, f"{nbytes / GIB:.1f} GiB {what}"

    def refusal(self, model_cfg: ModelConfig | None, task: dict[str, Any], model: torch.nn.Module | None = None
                ) -> str | None:
        """None if the task fits, else the message to log (the worker gives the lease back and exits 6).
        `model`: the run's model if built already (its shape is read from it)."""
        if model_cfg is None:
            return None
        hp = task.get("hparams") or {}
        batch, seq = int(hp.get("batch_size", 8)), int(hp.get("seq_len", model_cfg.block_size))
        bf16 = use_bf16(str(hp.get("precision", "auto")), self.device)
        key = (model_cfg.spec, repr(model_cfg.to_dict()), batch, seq, bf16)
        if key not in self._seen:
            # Read from the model already built when there is one: ModelShape.of builds one on the meta device,
            # which imports torch._dynamo (seconds of start-up a worker that holds the model need not pay).
            shape = ModelShape.from_model(model, model_cfg) if model is not None else ModelShape.of(model_cfg)
            self._seen[key] = self._check(model_cfg, shape, batch, seq, bf16)
        return self._seen[key]

    def _check(self, model_cfg: ModelConfig, shape: ModelShape, batch: int, seq: int, bf16: bool) -> str | None:
        # Each rank of a multi-GPU node trains batch / ranks windows (its weights and states are sharded too;
        # not counted here, so the check errs on the safe side).
        per_rank = max(1, -(-batch // self.ranks))
        cap, what = self.capacity()
        plan = plan_memory(shape, batch_size=per_rank, seq_len=seq, precision="bf16" if bf16 else "fp32",
                           capacity_bytes=cap)
        need = need_bytes(plan, self.device)
        if need <= cap:
            return None
        name = model_cfg.spec if model_cfg.spec != "hf" else f"hf {model_cfg.hf.get('model_type', '')}".strip()
        hint = ""
        if plan.suggestion is not None:
            hint = f"; it would fit with {plan.suggestion.label()}"
        elif plan.max_batch_size:
            hint = f"; batch_size {plan.max_batch_size} would fit with {plan.options.label()}"
        return (f"task refused: it does not fit in memory. Model {name} ({plan.shape.params / 1e6:,.1f}M params), "
                f"batch {per_rank} x {seq} tokens{' per rank' if self.ranks > 1 else ''}, "
                f"{'bf16' if bf16 else 'fp32'}: needs ~{_size(need)} (estimate, models/memory.py) but "
                f"{what} is available{hint}. Give this node more memory or join a run with a smaller model.")


def _size(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f} GiB" if nbytes >= 0.1 * GIB else f"{nbytes / (1 << 20):.1f} MiB"
