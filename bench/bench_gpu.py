"""Worker-task throughput on a GPU: run_task against a plain PyTorch training loop on the same model and shapes.

    PYTHONPATH=src python bench/bench_gpu.py --out bench/results/gpu.md             # on a CUDA machine
    PYTHONPATH=src python bench/bench_gpu.py --device cpu --out /tmp/gpu_cpu.md      # CPU mode: tiny shapes

On CUDA it times a GPT-2-small-shape gpt-bytes model (124M parameters, vocab 50,304, ctx 1024) and a 1B
Llama-shape transformers model (hidden 2048, 16 layers, GQA 32/8, vocab 128,256, ctx 2048): tokens/s and MFU
of one `run_task` call (after a warm-up call, so start-up and compilation are excluded) against a plain loop
(zero_grad, autocast forward, backward, clip, fused AdamW step) on the same model; the goal is run_task >=
90% of the plain loop. Peak memory is torch.cuda.max_memory_allocated of each, next to the memory plan's
estimate (models/memory.py). MFU = (6 P + 12 L h T) tokens/s / peak BF16 FLOP/s (PaLM's count; peak from
planner/gpus.py or --peak-tflops). On a CPU it runs tiny shapes and says so: those numbers say nothing about
GPUs. Every figure is measured here except the memory estimate and the peak FLOP/s (a datasheet value).
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from trainnet.models import ModelConfig, build_model
from trainnet.models.memory import MemoryOptions, ModelShape, plan_memory
from trainnet.train.local import ExecOptions, TaskHParams, make_inner_optimizer, params_of, run_task

GPU_SHAPES = {
    "gpt2-124m": (ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50_304), 16, 1024),
    "llama-1b": (ModelConfig(spec="hf", block_size=2048, hf={
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128_256, "tie_word_embeddings": True,
        "max_position_embeddings": 2048}), 4, 2048),
}
CPU_SHAPES = {
    "gpt-bytes tiny (CPU mode)": (ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=64), 8, 64),
    "llama tiny (CPU mode)": (ModelConfig(spec="hf", block_size=64, hf={
        "model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512}), 8, 64),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak(device: str, fn: Callable[[], object]) -> tuple[float, int | None]:
    """(seconds, peak allocated bytes on CUDA or None) of fn()."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    dt = time.perf_counter() - t0
    return dt, (torch.cuda.max_memory_allocated() if device.startswith("cuda") else None)


def plain_loop(model: torch.nn.Module, tokens: torch.Tensor, hp: TaskHParams, device: str, bf16: bool,
               fused: bool) -> None:
    """The baseline: the same math as run_task's inner loop, with nothing around it."""
    opt = make_inner_optimizer(model, hp.lr, hp.weight_decay, hp.beta1, hp.beta2, fused=fused)
    gen = torch.Generator(device=tokens.device).manual_seed(0)
    n = tokens.numel() - hp.seq_len - 1
    offsets = torch.arange(hp.seq_len + 1, device=tokens.device)
    for _ in range(hp.steps):
        starts = torch.randint(0, n, (hp.batch_size,), generator=gen, device=tokens.device)
        win = tokens[starts[:, None] + offsets].long()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(win[:, :-1], win[:, 1:])[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
        opt.step()


def bench_shape(name: str, mcfg: ModelConfig, batch: int, seq: int, device: str, steps: int, compile_: bool,
                checkpointing: bool, peak_flops: float | None, repeat: int = 3) -> dict[str, object]:
    cuda = device.startswith("cuda")
    shape = ModelShape.of(mcfg)
    model = build_model(mcfg, seed=0)
    base = params_of(model)
    tokens = torch.randint(0, shape.vocab, (max(batch * seq * 8, 1 << 20),), generator=torch.Generator().manual_seed(0))
    precision = "bf16" if cuda else "fp32"
    opts = ExecOptions(compile=compile_, checkpointing=checkpointing)
    warm = TaskHParams(steps=3, lr=3e-4, batch_size=batch, seq_len=seq, precision=precision)
    hp = TaskHParams(steps=steps, lr=3e-4, batch_size=batch, seq_len=seq, precision=precision)
    run_task(model, base, tokens, warm, seed=0, device=device, options=opts)  # warm-up (compile, allocator)
    dev_tokens = tokens.to(device)
    plain_loop(model, dev_tokens, warm, device, cuda, cuda)  # the same warm-up for the baseline
    task_s = plain_s = float("inf")
    for _ in range(repeat):  # interleaved, best of `repeat`: a shared machine's noise hits both alike
        dt, task_mem = _peak(device, lambda: run_task(model, base, tokens, hp, seed=1, device=device, options=opts))
        task_s = min(task_s, dt)
        dt, plain_mem = _peak(device, lambda: plain_loop(model, dev_tokens, hp, device, cuda, cuda))
        plain_s = min(plain_s, dt)
    if not cuda:  # CPU: live tensor bytes of a short extra task (the tracker slows ops, so not timed)
        from trainnet.models.memtrack import measure_peak

        short = TaskHParams(steps=2, lr=3e-4, batch_size=batch, seq_len=seq, precision=precision)
        task_mem, _ = measure_peak(lambda: run_task(model, base, tokens, short, seed=1, options=opts),
                                   keep=[model, base, tokens])
        # the base copy (host memory on a GPU worker) and the token array are not in the plan's device total
        task_mem -= 4 * shape.params + tokens.nbytes
    ntok = steps * batch * seq
    flops_per_token = 6 * shape.params + 12 * shape.layers * shape.hidden * seq
    plan = plan_memory(shape, batch_size=batch, seq_len=seq, capacity_bytes=1e15,
                       options=MemoryOptions(bf16=cuda, checkpointing=checkpointing, fused_adamw=cuda))
    mfu = (lambda s: ntok / s * flops_per_token / peak_flops) if peak_flops else (lambda s: None)
    return {"shape": name, "params": shape.params, "batch": f"{batch} x {seq}", "steps": steps,
            "task_tok_s": ntok / task_s, "plain_tok_s": ntok / plain_s, "ratio": plain_s / task_s,
            "task_mfu": mfu(task_s), "plain_mfu": mfu(plain_s), "task_mem": task_mem, "plain_mem": plain_mem,
            "plan_mem": plan.tensor_bytes}


def _fmt(v: object, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if pct:
        return f"{100 * float(v):.1f}%"
    return f"{float(v):,.0f}" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="markdown table (default: bench/results/gpu.md on CUDA)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per shape (default 20)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each (the fastest counts)")
    ap.add_argument("--shapes", default=None, help="comma-separated subset of the shapes")
    ap.add_argument("--compile", action="store_true", help="torch.compile (both run_task and the plain loop)")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing in both")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak dense BF16 TFLOP/s (default: the GPU table)")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    shapes = GPU_SHAPES if cuda else CPU_SHAPES
    if args.shapes:
        shapes = {k: v for k, v in shapes.items() if k in args.shapes.split(",")}
    steps = args.steps or 20
    peak, where = None, "CPU mode: tiny shapes; these figures say nothing about a GPU; MFU n/a (no CPU peak)"
    if cuda:
        name = torch.cuda.get_device_name()
        where = f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}"
        if args.peak_tflops:
            peak = args.peak_tflops * 1e12
        else:
            try:
                from trainnet.planner.gpus import gpu_kind

                peak = gpu_kind(name).peak_flops
            except KeyError:
                where += " (not in the GPU table: MFU n/a, give --peak-tflops)"
    else:
        torch.set_num_threads(1)
        where += f"; {platform.processor() or platform.machine()}, 1 thread, torch {torch.__version__}"
    print(where, flush=True)
    rows = [bench_shape(k, m, b, t, args.device, steps, args.compile, args.checkpointing, peak, args.repeat)
            for k, (m, b, t) in shapes.items()]
    gib = 1 << 30
    lines = [f"# run_task vs a plain PyTorch loop ({'GPU' if cuda else 'CPU mode'})", "",
             f"Measured on {where}. Command: `PYTHONPATH=src python bench/bench_gpu.py --device {args.device}"
             f"{' --compile' if args.compile else ''}{' --checkpointing' if args.checkpointing else ''}`; "
             f"{steps} timed steps after a warm-up, fastest of {args.repeat} interleaved runs each; bf16 autocast and fused AdamW on CUDA, fp32 on CPU. "
             "Peak memory: torch.cuda.max_memory_allocated on CUDA; on CPU the live tensor bytes of run_task "
             "(models/memtrack.py, base copy and token array excluded), not measured for the plain loop. Memory plan = the device "
             "tensors of models/memory.py's estimate (a formula, not a measurement; no CUDA context).", "",
             "| shape | params | batch | run_task tok/s | plain tok/s | run_task / plain | MFU run_task | MFU plain "
             "| peak mem run_task GiB | peak mem plain GiB | memory plan GiB (estimate) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = [f"{r[k] / gib:.3f}" if r[k] is not None else "n/a" for k in ("task_mem", "plain_mem")]
        lines.append(f"| {r['shape']} | {r['params'] / 1e6:,.1f}M | {r['batch']} | {_fmt(r['task_tok_s'])} | "
                     f"{_fmt(r['plain_tok_s'])} | {_fmt(r['ratio'], True)} | {_fmt(r['task_mfu'], True)} | "
                     f"{_fmt(r['plain_mfu'], True)} | {mem[0]} | {mem[1]} | {r['plan_mem'] / gib:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or ("bench/results/gpu.md" if cuda else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)


if __name__ == "__main__":
    main()
