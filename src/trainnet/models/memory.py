"""Memory plan of one worker task: will it fit this GPU, and which options make it fit? (estimates)

    plan = plan_memory(cfg.model, gpu="rtx4090", batch_size=8, seq_len=1024, precision="bf16")
    plan.fits, plan.device_bytes, plan.rows          # rows: (item, bytes, where, formula)
    plan.message                                     # one line a worker can print when it refuses a task
    print(plan.table())                              # the breakdown (every figure labelled an estimate)

Every number is an estimate from the formulas below, not a measurement. P = parameters, L = layers,
h = hidden size, I = MLP width, kv = key/value width, V = vocabulary, n = batch_size * seq_len tokens.

  device: weights 4P (fp32 master weights; autocast computes in bf16 from them)
          AdamW m and v 8P (8-bit states: 2P; CPU offload: 0)
          peak of the step = max(forward/backward, optimizer step):
            forward/backward = max(L * layer + head, 4P + layer) + bf16 weight copies
              layer = n * (fp32 elements * 4 + bf16 elements * 2), saved for backward per layer:
                      non-gated MLP (GPT): fp32 8h + 2I; under bf16 2h stay fp32, 6h + 2I become bf16
                      gated MLP (Llama):   fp32 8h + 2kv + 4I; under bf16 7h stay fp32, h + 2kv + 4I bf16
              bf16 weight copies: 2P (with checkpointing 2(V*h + P/L): one block's and the output layer's)
              head  = n * (3V + 3h) * 4 (logits, log-softmax, their gradient)
              with activation checkpointing: max(L * n * h * 4 + head, 4P + L * n * h * 4 + layer)
            optimizer step = 4P gradients + 4P foreach scratch (fused AdamW: 0)
          + CUDA context and allocator slack (assumption: 0.75 GiB + 10%)
  host:   base copy 4P (the pseudo-gradient is base - local), delta 4P, error-feedback residual 4P,
          CPU offload: + AdamW states 8P + gradient copy 4P

The per-layer element counts were measured (models/memtrack.py: live tensor storage of run_task on CPU)
for small GPT and Llama shapes; tests/models/test_memory.py checks the formula against that measurement
for other shapes. GPU kernels (flash attention, cuBLAS workspaces) differ from CPU ones in scratch space;
the slack term stands for that. Not modelled: torch.compile's own buffers, the shard's tokens, the codec.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from trainnet.models.config import ModelConfig

GIB = 1 << 30
CONTEXT_BYTES = 0.75 * GIB  # assumption: CUDA context + cuBLAS/cuDNN handles, not in the allocator's count
SLACK = 0.10  # assumption: caching-allocator fragmentation and kernel scratch, share of the tensor total


@dataclass(frozen=True)
class ModelShape:
    params: int
    layers: int
    hidden: int
    intermediate: int
    kv: int
    vocab: int
    gated: bool  # SwiGLU-style MLP (Llama, Qwen, Mistral) vs GELU MLP (GPT-2)

    @classmethod
    def of(cls, mcfg: ModelConfig) -> ModelShape:
        """The shape of a model config, read on the meta device (nothing is allocated)."""
        import torch

        from trainnet.models.registry import get_spec

        spec = get_spec(mcfg.spec)
        with torch.device("meta"):
            model = spec.build(spec.resolve(mcfg))
        return cls.from_model(model, mcfg)

    @classmethod
    def from_model(cls, model: Any, mcfg: ModelConfig) -> ModelShape:
        """The shape read from a model already built (on any device) from `mcfg`."""
        from trainnet.models.registry import get_spec

        resolved = get_spec(mcfg.spec).resolve(mcfg)
        params = sum(p.numel() for p in model.parameters())
        if resolved.spec == "gpt-bytes":
            h = resolved.n_embd
            return cls(params, resolved.n_layer, h, 4 * h, h, resolved.vocab_size, False)
        names = [n for n, _ in model.named_parameters()]
        gated = any(("gate_proj" in n or "gate_up_proj" in n or ".w3." in n) for n in names)
        c = model.hf.config
        h = int(c.hidden_size)
        heads = int(c.num_attention_heads)
        head_dim = int(getattr(c, "head_dim", None) or h // heads)
        kv_heads = int(getattr(c, "num_key_value_heads", None) or heads)
        inter = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * h
        return cls(params, int(c.num_hidden_layers), h, int(inter), kv_heads * head_dim, int(c.vocab_size), gated)


@dataclass(frozen=True)
class MemoryOptions:
    bf16: bool = False  # a run setting (inner.precision): bf16 autocast
    checkpointing: bool = False  # ExecOptions.checkpointing
    fused_adamw: bool = True  # ExecOptions.fused_adamw (on by default on CUDA)
    optim_8bit: bool = False  # 8-bit AdamW states (bitsandbytes, CUDA): not implemented in run_task yet
    offload: bool = False  # AdamW states and step on the CPU: not implemented in run_task yet

    def label(self) -> str:
        on = [n for n, v in (("bf16", self.bf16), ("activation checkpointing", self.checkpointing),
                             ("fused AdamW", self.fused_adamw), ("8-bit AdamW states", self.optim_8bit),
                             ("CPU offload of AdamW", self.offload)) if v]
        return " + ".join(on) or "no memory options"


NOT_IMPLEMENTED = {"optim_8bit": "8-bit AdamW states", "offload": "CPU offload of AdamW"}


@dataclass(frozen=True)
class MemoryPlan:
    gpu: str
    capacity_bytes: float
    shape: ModelShape
    batch_size: int
    seq_len: int
    options: MemoryOptions
    rows: tuple[tuple[str, float, str, str], ...]  # (item, bytes, "gpu"/"host", formula)
    device_bytes: float
    host_bytes: float
    tensor_bytes: float  # device tensors only (no CUDA context or slack): compare with max_memory_allocated
    fits: bool
    suggestion: MemoryOptions | None  # the first option set (in order of cost) that fits, if any
    max_batch_size: int  # the largest batch that fits with the implemented options (bf16, checkpointing)
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """The breakdown as text; every figure is an estimate."""
        lines = [f"memory plan (estimate, from formulas): {self.shape.params / 1e6:,.1f}M params, batch "
                 f"{self.batch_size} x {self.seq_len} tokens, {self.options.label()}, on {self.gpu}",
                 f"{'item':38} {'where':5} {'GiB (est.)':>11}  formula"]
        for item, nbytes, where, formula in self.rows:
            lines.append(f"{item:38} {where:5} {nbytes / GIB:11.2f}  {formula}")
        lines.append(f"{'device total':38} {'gpu':5} {self.device_bytes / GIB:11.2f}  of {self.capacity_bytes / GIB:.1f} "
                     f"GiB")
        lines.append(f"{'host total':38} {'host':5} {self.host_bytes / GIB:11.2f}")
        lines.append(self.message)
        return "\n".join(lines)


def _layer_bytes(s: ModelShape, n: int, bf16: bool) -> float:
    h, i, kv = s.hidden, s.intermediate, s.kv
    if s.gated:
        f32, b16 = ((7 * h, h + 2 * kv + 4 * i) if bf16 else (8 * h + 2 * kv + 4 * i, 0))
    else:
        f32, b16 = ((2 * h, 6 * h + 2 * i) if bf16 else (8 * h + 2 * i, 0))
    return n * (4 * f32 + 2 * b16)


def estimate(shape: ModelShape, batch_size: int, seq_len: int, options: MemoryOptions
             ) -> list[tuple[str, float, str, str]]:
    """The rows of a plan: (item, bytes, where, formula). Pure arithmetic."""
    s, o, p = shape, options, float(shape.params)
    n = batch_size * seq_len
    layer = _layer_bytes(s, n, o.bf16)
    head = n * (3 * s.vocab + 3 * s.hidden) * 4.0
    # autocast's bf16 weight copies live until backward; with checkpointing only the recomputed block's
    # and the output layer's are held at once
    copies = 0.0 if not o.bf16 else 2 * (s.vocab * s.hidden + p / s.layers) if o.checkpointing else 2 * p
    if o.checkpointing:
        inputs = s.layers * n * s.hidden * 4.0
        acts = max(inputs + head, 4 * p + inputs + layer)
        act_formula = "checkpointing: max(L*n*h*4 + head, 4P + L*n*h*4 + layer)"
    else:
        acts = max(s.layers * layer + head, 4 * p + layer)
        act_formula = "L*layer + head (n*(3V+3h)*4)"
    step = 4 * p + (0.0 if o.fused_adamw else 4 * p)
    states = 0.0 if o.offload else (2 * p if o.optim_8bit else 8 * p)
    rows = [
        ("weights (fp32)", 4 * p, "gpu", "4P"),
        ("AdamW m, v" + (" (8-bit)" if o.optim_8bit else "") + (" -> host" if o.offload else ""), states, "gpu",
         "0 (offloaded)" if o.offload else ("2P" if o.optim_8bit else "8P")),
    ]
    if acts + copies >= step:
        rows += [("activations (peak of forward/backward)", acts, "gpu", act_formula)]
        if copies:
            rows += [("bf16 weight copies (autocast)", copies, "gpu",
                      "2(V*h + P/L) (checkpointing)" if o.checkpointing else "2P")]
    else:
        rows += [("gradients + optimizer step scratch", step, "gpu", "4P + " + ("0 (fused)" if o.fused_adamw else "4P"))]
    tensors = sum(r[1] for r in rows)
    rows += [("CUDA context + allocator slack", CONTEXT_BYTES + SLACK * tensors, "gpu", "assumption: 0.75 GiB + 10%")]
    rows += [("base copy for the pseudo-gradient", 4 * p, "host", "4P"), ("pseudo-gradient (delta)", 4 * p, "host", "4P"),
             ("error-feedback residual", 4 * p, "host", "4P")]
    if o.offload:
        rows += [("AdamW m, v + gradient copy (offloaded)", 12 * p, "host", "8P + 4P")]
    return rows


_LADDER = (MemoryOptions(), MemoryOptions(bf16=True), MemoryOptions(bf16=True, fused_adamw=True),
           MemoryOptions(bf16=True, fused_adamw=True, checkpointing=True),
           MemoryOptions(bf16=True, fused_adamw=True, checkpointing=True, optim_8bit=True),
           MemoryOptions(bf16=True, fused_adamw=True, checkpointing=True, offload=True))


def _totals(rows: list[tuple[str, float, str, str]]) -> tuple[float, float]:
    return (sum(b for _, b, w, _ in rows if w == "gpu"), sum(b for _, b, w, _ in rows if w == "host"))


def plan_memory(model: ModelConfig | ModelShape, gpu: str = "rtx4090", batch_size: int = 8, seq_len: int | None = None,
                options: MemoryOptions | None = None, precision: str = "fp32",
                capacity_bytes: float | None = None) -> MemoryPlan:
    """Whether one task of `model` fits `gpu` (a key of planner/gpus.py, or capacity_bytes: e.g. a worker's
    torch.cuda.mem_get_info()[1]); `precision` "bf16" sets options.bf16. Pure: builds nothing."""
    from trainnet.planner.gpus import gpu_kind

    shape = model if isinstance(model, ModelShape) else ModelShape.of(model)
    seq = seq_len if seq_len is not None else (model.block_size if isinstance(model, ModelConfig) else 0)
    if batch_size <= 0 or seq <= 0:
        raise ValueError(f"batch_size and seq_len must be positive (got {batch_size}, {seq})")
    if precision not in ("fp32", "bf16", "auto"):
        raise ValueError(f"precision must be fp32, bf16 or auto, got {precision!r}")
    opts = options or MemoryOptions()
    if precision in ("bf16", "auto"):  # "auto" is bf16 on any GPU that supports it
        opts = replace(opts, bf16=True)
    if capacity_bytes is None:
        kind = gpu_kind(gpu)
        name, capacity = kind.name, kind.memory_gb * 1e9
    else:
        name, capacity = gpu, float(capacity_bytes)
    rows = estimate(shape, batch_size, seq, opts)
    device, host = _totals(rows)
    fits = device <= capacity
    suggestion = None
    if not fits:
        for cand in _LADDER:
            merged = MemoryOptions(**{k: getattr(cand, k) or getattr(opts, k) for k in asdict(cand)})
            if _totals(estimate(shape, batch_size, seq, merged))[0] <= capacity:
                suggestion = merged
                break
    best = replace(opts, bf16=True, checkpointing=True, fused_adamw=True)
    max_batch = largest_batch(shape, seq, best, capacity)
    tensors = sum(b for item, b, where, _ in rows if where == "gpu" and not item.startswith("CUDA context"))
    return MemoryPlan(name, capacity, shape, batch_size, seq, opts, tuple(rows), device, host, tensors, fits,
                      suggestion, max_batch, _message(name, capacity, device, fits, opts, suggestion, shape, batch_size, seq,
                                          max_batch, best))


def largest_batch(shape: ModelShape, seq_len: int, options: MemoryOptions, capacity: float, limit: int = 1 << 16
                  ) -> int:
    """The largest batch size (<= limit) whose estimate fits `capacity` with these options; 0 if none."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _totals(estimate(shape, mid, seq_len, options))[0] <= capacity:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _message(gpu: str, capacity: float, device: float, fits: bool, opts: MemoryOptions,
             suggestion: MemoryOptions | None, shape: ModelShape, batch: int, seq: int, max_batch: int,
             best: MemoryOptions) -> str:
    need = f"needs ~{device / GIB:.1f} GiB (estimate) of {capacity / GIB:.1f} GiB on {gpu}"
    what = f"a task of {shape.params / 1e6:,.1f}M params, batch {batch} x {seq} with {opts.label()}"
    if fits:
        return f"fits: {what} {need}"
    if suggestion is None:
        smaller = (f"batch_size {max_batch} fits with {best.label()}" if max_batch else
                   f"no batch size fits at seq_len {seq}: use a shorter sequence or a larger GPU")
        return f"does not fit: {what} {need}; no option set fits at this batch size; {smaller}"
    missing = [label for key, label in NOT_IMPLEMENTED.items() if getattr(suggestion, key)]
    note = f" ({', '.join(missing)}: not implemented in run_task yet)" if missing else ""
    return f"does not fit: {what} {need}; fits with {suggestion.label()}{note}"
