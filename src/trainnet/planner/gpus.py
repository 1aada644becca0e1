"""Built-in table of GPU kinds the planner and the energy fallback know about.

    kind = GPU_KINDS["rtx4090"]; kind.peak_flops, kind.power_w, kind.usd_per_hour

Peak FLOP/s are dense BF16 tensor-core rates (no 2:4 sparsity), with FP32 accumulate for
GeForce cards, from NVIDIA's architecture whitepapers / datasheets; board power is the
vendor's total board / graphics power. Hourly prices are NOT vendor numbers: they are rough
2024 marketplace (consumer) or on-demand cloud (data-center) prices and are labelled as
assumptions wherever they are printed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuKind:
    """One GPU model: peak dense BF16 FLOP/s, board power, memory, price, and where each came from."""

    key: str
    name: str
    peak_flops: float  # dense BF16 tensor FLOP/s
    power_w: float  # board power (TGP/TDP), W
    memory_gb: float
    usd_per_hour: float  # rental price per GPU-hour (assumption)
    flops_source: str
    power_source: str
    price_source: str


_MARKET = "assumption: rough 2024 GPU-marketplace rental price (e.g. vast.ai-style), varies widely"
_CLOUD = "assumption: rough 2024 on-demand cloud price per GPU-hour, varies widely"

GPU_KINDS: dict[str, GpuKind] = {
    "rtx3060": GpuKind(
        "rtx3060",
        "NVIDIA GeForce RTX 3060 12GB",
        25.5e12,
        170.0,
        12.0,
        0.08,
        "derived: NVIDIA spec 12.7 TFLOPS FP32 x 2 (GA10x GeForce BF16-tensor/FP32 ratio, as for the 3090) "
        "- assumption",
        "vendor spec: NVIDIA RTX 3060 product page (170 W graphics card power)",
        _MARKET,
    ),
    "rtx3090": GpuKind(
        "rtx3090",
        "NVIDIA GeForce RTX 3090 24GB",
        71e12,
        350.0,
        24.0,
        0.20,
        "vendor spec: NVIDIA Ampere GA102 whitepaper, peak BF16 tensor TFLOPS (FP32 acc.) 71 dense",
        "vendor spec: NVIDIA RTX 3090 product page (350 W total graphics power)",
        _MARKET,
    ),
    "rtx4090": GpuKind(
        "rtx4090",
        "NVIDIA GeForce RTX 4090 24GB",
        165.2e12,
        450.0,
        24.0,
        0.35,
        "vendor spec: NVIDIA Ada Lovelace whitepaper, peak BF16 tensor TFLOPS (FP32 acc.) 165.2 dense",
        "vendor spec: NVIDIA RTX 4090 product page (450 W total graphics power)",
        _MARKET,
    ),
    "a100": GpuKind(
        "a100",
        "NVIDIA A100 SXM4 80GB",
        312e12,
        400.0,
        80.0,
        1.50,
        "vendor spec: NVIDIA A100 datasheet, BF16 tensor 312 TFLOPS dense",
        "vendor spec: NVIDIA A100 datasheet (400 W max TDP, SXM4)",
        _CLOUD,
    ),
    "h100": GpuKind(
        "h100",
        "NVIDIA H100 SXM5 80GB",
        989e12,
        700.0,
        80.0,
        2.50,
        "vendor spec: NVIDIA H100 datasheet, BF16 tensor 1,979 TFLOPS with sparsity = 989 dense",
        "vendor spec: NVIDIA H100 datasheet (up to 700 W max TDP, SXM5)",
        _CLOUD,
    ),
}


def gpu_kind(key: str) -> GpuKind:
    """Look a GPU up by key (`rtx4090`) or loosely by name (`NVIDIA GeForce RTX 4090`); KeyError if unknown."""
    k = key.lower().replace(" ", "").replace("-", "").replace("_", "")
    if k in GPU_KINDS:
        return GPU_KINDS[k]
    for kind in GPU_KINDS.values():
        # torch.cuda.get_device_name() gives e.g. "NVIDIA GeForce RTX 4090" or "NVIDIA H100 80GB HBM3".
        if kind.key.replace("rtx", "") in k and (kind.key.startswith("rtx") == ("rtx" in k)):
            return kind
    raise KeyError(f"unknown GPU kind {key!r}; known: {', '.join(GPU_KINDS)}")
