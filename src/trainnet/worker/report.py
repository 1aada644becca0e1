"""The end-of-run summary `trainnet demo` prints; every figure is measured (worker task logs,
the coordinator's /v1/status, an evaluation of the final model) or labelled otherwise.

    rows = read_task_logs(out / "workers")         # one dict per task, from each worker's tasks.jsonl
    print(loss_table(rows))                        # training loss against accepted tokens
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from trainnet.worker.status import human_bytes


def read_task_logs(workers_dir: Path) -> list[dict[str, Any]]:
    """All workers' task records, oldest first (a line torn by SIGKILL is skipped)."""
    rows = []
    for path in sorted(Path(workers_dir).glob("*/tasks.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "time" in row:
                row["worker"] = path.parent.name
                rows.append(row)
    return sorted(rows, key=lambda r: r["time"])


def loss_table(rows: list[dict[str, Any]], n_rows: int = 8) -> str:
    """Mean training loss of accepted tasks, binned by cumulative accepted tokens."""
    acc = [r for r in rows if r.get("accepted")]
    if not acc:
        return "  (no accepted tasks recorded)"
    total = sum(int(r["tokens"]) for r in acc)
    width = max(total / n_rows, 1)
    bins: list[list[dict[str, Any]]] = [[] for _ in range(n_rows)]
    cum = 0
    for r in acc:
        bins[min(int(cum / width), n_rows - 1)].append(r)
        cum += int(r["tokens"])
    lines = ["  tokens (accepted)        tasks  train loss (task mean)  first -> last step"]
    start = 0
    for b in bins:
        if not b:
            continue
        end = start + sum(int(r["tokens"]) for r in b)
        mean = _mean([r["loss_mean"] for r in b])
        first, last = _mean([r["loss_first"] for r in b]), _mean([r["loss_last"] for r in b])
        lines.append(f"  {start:>10,} - {end:>10,}  {len(b):>5}  {mean:>10.3f}             {first:.3f} -> {last:.3f}")
        start = end
    return "\n".join(lines)


def energy_line(rows: list[dict[str, Any]]) -> str:
    """Energy of the workers' training tasks (every task, accepted or not), labelled measured or estimate."""
    with_e = [r for r in rows if isinstance(r.get("energy_j"), int | float)]
    if not with_e:
        return "-- energy: not reported by the workers"
    total = sum(float(r["energy_j"]) for r in with_e)
    meas = sum(float(r["energy_j"]) for r in with_e if r.get("energy_measured"))
    label = ("measured" if meas == total else "estimate" if meas == 0 else
             f"{100 * meas / total:.0f}% measured, rest estimated")
    sources = sorted({str(r.get("energy_source", "")) for r in with_e})
    return (f"-- energy of {len(with_e)} training tasks: {total:,.1f} J = {total / 3.6e6:.6f} kWh ({label}; "
            f"{'; '.join(sources)})")


def defence_line(status: dict[str, Any]) -> str:
    """The run's defences as /v1/status reports them, with the audits passed / failed and bans."""
    d = status.get("defences") or {}
    banned = [n.get("node_id") for n in status.get("node_table") or [] if n.get("banned")]
    line = (f"-- defences: rule {d.get('aggregator', '?')}, verification {100 * float(d.get('verify_rate') or 0):.0f}% "
            f"+ probation {d.get('verify_probation', '?')}: audits passed {status.get('audits_passed', 0)}, "
            f"failed {status.get('audits_failed', 0)}, pending {status.get('audits_pending', 0)}; "
            f"banned {len(banned)}" + (f" ({', '.join(map(str, banned))})" if banned else ""))
    for w in d.get("off") or []:
        line += f"\n   WARNING: {w}"
    return line


def _mean(xs: list[Any]) -> float:
    vals = [float(x) for x in xs if isinstance(x, int | float) and math.isfinite(float(x))]
    return sum(vals) / len(vals) if vals else float("nan")


def fetch_model(url: str, info: dict[str, Any], version: int) -> dict[str, Any]:
    """A published version's parameters, downloaded as a worker would (signed manifest, hashed blobs)."""
    from trainnet.models import ModelConfig, build_model
    from trainnet.train.local import params_of
    from trainnet.worker.client import CoordinatorClient
    from trainnet.worker.versions import VersionFetcher

    cfg = ModelConfig.from_dict(info["model"])
    template = params_of(build_model(cfg, seed=0))
    client = CoordinatorClient(url)
    try:
        return VersionFetcher(client, template, info.get("signer")).get(version)
    finally:
        client.close()


def save_final_model(url: str, info: dict[str, Any], version: int, path: Path) -> Path:
    """Write version `version` of the run at `url` as a checkpoint `trainnet sample` and `trainnet export` read:
    the model config and the data's tokenizer (kind, sha256) in the metadata, so export can check --tokenizer."""
    import torch
    from safetensors.torch import save as st_save

    from trainnet.models import ModelConfig
    from trainnet.models.checkpoint import checkpoint_metadata

    params = fetch_model(url, info, version)
    cfg = ModelConfig.from_dict(info["model"])
    meta = checkpoint_metadata(cfg, tokenizer=(info.get("data") or {}).get("tokenizer"),
                               trainnet_version=str(version), trainnet_run_id=str(info.get("run_id", "")))
    path = Path(path)
    path.write_bytes(st_save({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in params.items()},
                             metadata=meta))
    return path


def _save_final_model(cluster: Any, out: Path, info: dict[str, Any], version: int) -> Path:
    """The final published version, downloaded as a worker would, as out/final_model.safetensors."""
    return save_final_model(cluster.url, info, version, out / "final_model.safetensors")


def _final_val_loss(cluster: Any, version: int, wait_s: float = 60.0) -> float | None:
    """The coordinator's held-out loss of the final version (its evaluator: the run's one held-out set)."""
    import time

    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        curve = cluster.dashboard().get("val_curve") or []
        hit = [p for p in curve if p["version"] == version]
        if hit:
            return float(hit[-1]["val_loss"])
        time.sleep(0.5)
    return None


def print_summary(cluster: Any, status: dict[str, Any], out: Path, elapsed_s: float, echo: Any,
                  sample_tokens: int = 240) -> dict[str, Any]:
    """Print the run's summary; returns its figures (for --json)."""
    from trainnet.model.sample import sample_lines

    info = cluster.get("/v1/info").json()
    rows = read_task_logs(out / "workers")
    echo("")
    echo(f"== run {info.get('run_id')} finished in {elapsed_s:.0f}s wall: model v{status.get('model_version')}, "
         f"{status.get('tokens', 0):,} accepted tokens (target {status.get('tokens_target', 0):,})")
    echo("-- training loss vs tokens (measured by the workers on their task batches)")
    echo(loss_table(rows))
    up, down, raw, down_model = (sum(int(r.get(k, 0)) for r in rows)
                                 for k in ("bytes_up", "bytes_down", "bytes_raw", "bytes_down_model"))
    n_params = int(info.get("n_params") or 0)
    figures: dict[str, Any] = {
        "run_id": info.get("run_id"), "wall_s": round(elapsed_s, 1), "model_version": status.get("model_version"),
        "tokens": status.get("tokens"), "updates_accepted": status.get("updates_accepted"),
        "updates_rejected": status.get("updates_rejected"), "reject_reasons": status.get("reject_reasons") or {},
        "uploads": len(rows), "worker_bytes_up": up, "worker_bytes_down": down, "worker_model_bytes_down": down_model,
        "params": n_params,
        # what a worker downloads per task to hold the model it trains from (deltas, or a full version to join)
        "download_bits_per_param": 8 * down_model / max(1, len(rows)) / n_params if n_params else None,
        "final_val_loss": None, "checkpoint": None}
    echo(f"-- bytes (measured by the workers, {len(rows)} uploads): up {human_bytes(up)} "
         f"(the same updates as fp32: {human_bytes(raw)}, {raw / max(up, 1):.1f}x smaller), "
         f"down {human_bytes(down)} (models + shards)")
    echo(energy_line(rows))
    reasons = status.get("reject_reasons") or {}
    echo(f"-- coordinator: accepted {status.get('updates_accepted')}, rejected {status.get('updates_rejected')}"
         + (f" ({', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))})" if reasons else "")
         + f", leases expired {status.get('leases_expired', '?')}, outer steps {status.get('outer_steps', '?')}, "
           f"nodes {status.get('nodes')}")
    for n in cluster.operator_status().get("node_table") or []:
        rr = n.get("reject_reasons") or {}
        echo(f"   node {n.get('node_id')}: {n.get('tokens', 0):,} tokens, accepted {n.get('accepted')}, "
             f"rejected {n.get('rejected')}" + (f" ({', '.join(f'{k} {v}' for k, v in sorted(rr.items()))})"
                                                if rr else "")
             + f", leases expired {n.get('leases_expired', 0)}" + (" BANNED" if n.get("banned") else ""))
    outcomes: dict[str, int] = {}
    for r in rows:
        key = "accepted" if r.get("accepted") else str(r.get("outcome", "?")).split(" (")[0]
        outcomes[key] = outcomes.get(key, 0) + 1
    echo(f"-- workers saw: {', '.join(f'{k} {v}' for k, v in sorted(outcomes.items())) or 'nothing'}")
    echo(defence_line(status))
    v = int(status.get("model_version", 0))
    try:
        ckpt = _save_final_model(cluster, out, info, v)
    except Exception as exc:  # the summary is still useful without the model
        echo(f"-- could not fetch the final model: {exc}")
        return figures
    echo(f"-- final model v{v}: {ckpt} (coordinator state: {out / 'coordinator'})")
    loss = _final_val_loss(cluster, v)
    figures.update(final_val_loss=loss, checkpoint=str(ckpt))
    data = info.get("data") or {}
    vocab = int(data.get("vocab_size") or 256)
    byte_level = (data.get("tokenizer") or {}).get("kind", "bytes") == "bytes"
    unit = "nats/byte" if byte_level else "nats/token"
    figures["val_loss_unit"] = unit
    if loss is None:
        echo("-- held-out loss of the final model: not evaluated yet (see the dashboard)")
    else:
        echo(f"-- held-out loss of the final model: {loss:.3f} {unit}, the coordinator's evaluation on the "
             f"run's held-out windows (the dashboard and report show the same figure; a uniform guess scores "
             f"ln {vocab} = {math.log(vocab):.3f})")
    if not byte_level or (info.get("model") or {}).get("spec", "gpt-bytes") != "gpt-bytes":
        tok = "" if byte_level else " --tokenizer DATA_FOLDER"
        echo(f"-- sample it: trainnet sample --checkpoint {ckpt}{tok}; export it for transformers: "
             f"trainnet export {ckpt} --hf OUT{tok}")
        return figures
    echo(f"-- sampled from the final model (prompt 'def ', {sample_tokens} bytes, temperature 0.8):")
    for line in sample_lines(ckpt, prompt="def ", tokens=sample_tokens, max_lines=8):
        echo(f"   | {line}")
    echo(f"   (more: trainnet sample --checkpoint {ckpt})")
    return figures
