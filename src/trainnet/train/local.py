"""Run one task: base parameters, shard, sample seed, H inner AdamW steps -> pseudo-gradient.

    result = run_task(model, base_params, shard.tokens, TaskHParams(steps=100, lr=3e-3), seed=7)
    result.delta      # ParamDict, theta_base - theta_local (DiLoCo's pseudo-gradient)
    result.tokens, result.loss_first, result.loss_last, result.time_s

The inner optimizer starts fresh for every task, so a task's output depends only on its public
inputs (base parameters, shard bytes, seed, hyperparameters): that is what lets a verifier recompute
it. On CPU the result is bit-for-bit deterministic for the same inputs and thread count.

Any `torch.nn.Module` whose `forward(x, y)` returns a loss (or a tuple ending with the loss) works.

GPU options (a worker's choice, not a task input): `run_task(..., options=ExecOptions(compile=True,
checkpointing=True))`. On CPU only activation checkpointing applies, and it gives bit-identical results;
torch.compile and the fused AdamW kernel apply on CUDA only, so CPU results never depend on them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn

from trainnet.models.registry import param_groups, set_checkpointing
from trainnet.train.partial import Partial, TaskHooks
from trainnet.train.schedule import lr_at

ParamDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TaskHParams:
    steps: int
    lr: float
    batch_size: int = 8
    seq_len: int = 64
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # The run's lr schedule (warm-up then cosine, see train/schedule.py) evaluated over the share
    # of the token budget this task covers: [progress_start, progress_end). Without them, lr is flat.
    progress_start: float | None = None
    progress_end: float | None = None
    lr_warmup: float = 0.0
    min_lr_ratio: float = 1.0
    # Numerics of the forward pass, a task input like the lr: "fp32"; "bf16" (autocast on any device);
    # "auto" (bf16 autocast on a CUDA device that supports it, else fp32). A verifier can only replay a
    # task in the precision it ran in: see use_bf16() and bench/results/verify_gpu.md.
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def lr_at_step(self, step: int) -> float:
        if self.progress_start is None or self.progress_end is None:
            return self.lr
        p = self.progress_start + (self.progress_end - self.progress_start) * step / max(self.steps, 1)
        return lr_at(p, self.lr, self.lr_warmup, self.min_lr_ratio)

    def to_dict(self) -> dict:
        return asdict(self)


PRECISIONS = ("auto", "fp32", "bf16")


def use_bf16(precision: str, device: str | torch.device) -> bool:
    """Whether a task of this precision trains under bf16 autocast on `device`."""
    if precision == "auto":
        dev = torch.device(device)
        return dev.type == "cuda" and torch.cuda.is_bf16_supported()
    return precision == "bf16"


@dataclass(frozen=True)
class ExecOptions:
    """How this machine runs a task (bf16 is a task input instead: TaskHParams.precision).

    compile: torch.compile the model (CUDA only; compiled once per model object, and it stays compiled).
    checkpointing: recompute each transformer block in backward (any device; same numbers, less memory;
        needs a model from trainnet.models.build_model).
    fused_adamw: the fused CUDA AdamW kernel (CUDA only; CPU keeps foreach AdamW)."""

    compile: bool = False
    checkpointing: bool = False
    fused_adamw: bool = True

    def on(self, device: str | torch.device) -> ExecOptions:
        """The options that apply on `device` (CUDA-only ones switched off elsewhere)."""
        cuda = torch.device(device).type == "cuda"
        return replace(self, compile=self.compile and cuda, fused_adamw=self.fused_adamw and cuda)


def apply_options(model: nn.Module, options: ExecOptions) -> None:
    """Set up `model` for these (device-resolved) options."""
    set_checkpointing(model, options.checkpointing)
    if options.compile and not getattr(model, "_trainnet_compiled", False):
        model.compile()  # in place: parameter names stay the same (torch.compile(model) would prefix them)
        model._trainnet_compiled = True


@dataclass
class TaskResult:
    delta: ParamDict
    tokens: int
    steps: int
    loss_first: float
    loss_last: float
    loss_mean: float
    time_s: float


def _loss_of(out: object) -> torch.Tensor:
    if isinstance(out, tuple):
        out = out[-1]
    if not isinstance(out, torch.Tensor) or out.dim() != 0:
        raise TypeError("model(x, y) must return a scalar loss or a tuple ending with one")
    return out


def sample_batch(tokens: torch.Tensor, batch_size: int, seq_len: int, gen: torch.Generator) -> tuple[
    torch.Tensor, torch.Tensor
]:
    """Random windows of seq_len+1 bytes from a shard; x is the window, y the window shifted by one."""
    n = tokens.numel() - seq_len - 1
    if n <= 0:
        raise ValueError(f"shard of {tokens.numel()} tokens is too small for seq_len {seq_len}")
    starts = torch.randint(0, n + 1, (batch_size,), generator=gen)
    idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]
    win = tokens[idx].long()
    return win[:, :-1], win[:, 1:]


def params_of(model: nn.Module) -> ParamDict:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def load_params(model: nn.Module, params: ParamDict) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])


def make_inner_optimizer(model: nn.Module, lr: float, weight_decay: float, beta1: float, beta2: float,
                         fused: bool = False) -> torch.optim.AdamW:
    """AdamW with the model spec's parameter groups (built in: weight decay on matrices only, not on norms
    and biases, as nanoGPT); `fused` (CUDA) uses the fused kernel instead of foreach."""
    groups = param_groups(model, weight_decay)
    if fused:
        return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), fused=True)
    return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), foreach=True)


def run_task(
    model: nn.Module,
    base_params: ParamDict,
    tokens: torch.Tensor,
    hp: TaskHParams,
    seed: int,
    device: str | torch.device = "cpu",
    options: ExecOptions | None = None,
    hooks: TaskHooks | None = None,
) -> TaskResult | Partial:
    """Train `model` from `base_params` for hp.steps AdamW steps on windows of `tokens` drawn with
    `seed`; return the pseudo-gradient base - local and measured stats. `options`: see ExecOptions.
    `hooks` (train/partial.py): per-step progress, a pause that returns a resumable Partial, a resume."""
    t0 = time.perf_counter()
    hooks = hooks or TaskHooks()
    opts = (options or ExecOptions()).on(device)
    model.to(device)
    resume = hooks.resume
    load_params(model, resume.params if resume is not None else base_params)
    model.train()
    apply_options(model, opts)
    opt = make_inner_optimizer(model, hp.lr, hp.weight_decay, hp.beta1, hp.beta2, fused=opts.fused_adamw)
    gen = torch.Generator().manual_seed(seed)
    losses: list = []
    start = 0
    if resume is not None:
        opt.load_state_dict(resume.optimizer)
        gen.set_state(resume.generator)
        losses = [torch.tensor(x) for x in resume.losses]
        start = resume.step
        t0 -= resume.elapsed_s
    tokens = tokens.to(device) if tokens.device != torch.device(device) else tokens
    bf16 = use_bf16(hp.precision, device)
    for step in range(start, hp.steps):
        for group in opt.param_groups:
            group["lr"] = hp.lr_at_step(step)
        x, y = sample_batch(tokens, hp.batch_size, hp.seq_len, gen)
        # Free the last step's gradients before the forward, not after: same numbers, and they do not
        # share the activation peak (4 bytes per parameter less; see models/memory.py).
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss = _loss_of(model(x.to(device), y.to(device)))
        loss.backward()
        if hp.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
        opt.step()
        losses.append(loss.detach())
        if hooks.on_step is not None:
            hooks.on_step(step + 1, float(loss.detach()))
        if hooks.should_pause is not None and step + 1 < hp.steps and hooks.should_pause():
            return Partial(hooks.task_id, step + 1, params_of(model), opt.state_dict(), gen.get_state(),
                           [float(x) for x in losses], time.perf_counter() - t0)
    loss_t = torch.stack([x.float() for x in losses]).cpu() if losses else torch.zeros(1)
    # Drop the optimizer's states and the last gradients before the delta is allocated (12 bytes per
    # parameter less at the end of a task; the numbers do not change).
    opt.zero_grad(set_to_none=True)
    del opt
    with torch.no_grad():
        delta = {n: (base_params[n].to(device) - p.detach()).cpu() for n, p in model.named_parameters()}
    return TaskResult(
        delta=delta,
        tokens=hp.steps * hp.batch_size * hp.seq_len,
        steps=hp.steps,
        loss_first=float(loss_t[0]),
        loss_last=float(loss_t[-1]),
        loss_mean=float(loss_t.mean()),
        time_s=time.perf_counter() - t0,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, params: ParamDict, val_tokens: list[torch.Tensor], batches: int, batch_size: int,
    seq_len: int, seed: int = 1234, device: str | torch.device = "cpu",
) -> float:
    """Mean loss over a fixed set of held-out windows (same windows for every call with this seed)."""
    load_params(model, params)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for b in range(batches):
        shard = val_tokens[b % len(val_tokens)]
        x, y = sample_batch(shard, batch_size, seq_len, gen)
        total += float(_loss_of(model(x.to(device), y.to(device))))
    model.train()
    return total / batches


def flatten(params: ParamDict, order: ParamDict | None = None) -> torch.Tensor:
    """Concatenate tensors into one fp32 vector, in the key order of `order` (default: params)."""
    keys = list(order if order is not None else params)
    return torch.cat([params[k].reshape(-1).float() for k in keys])


def unflatten(flat: torch.Tensor, like: ParamDict) -> ParamDict:
    out, i = {}, 0
    for name, t in like.items():
        n = t.numel()
        out[name] = flat[i : i + n].view_as(t).to(t.dtype)
        i += n
    if i != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} elements, parameters need {i}")
    return out
