"""`trainnet verifier`: a designated verifier node that recomputes audits for a coordinator.

    trainnet verifier --coordinator http://127.0.0.1:8470 --state ~/.trainnet/verifier [--max-audits N]
    code = VerifierNode(VerifierOptions("http://127.0.0.1:8470", Path("v0"))).run()   # the same, as a library
    VerifierNode(opts).step()   # one round: a verdict record, seconds to wait, or None when the run is done

For a coordinator started with `--verifiers nodes --verifier-keys FILE` (docs/PROTOCOL.md, "Verifier
nodes"): the node's key (state_dir/node_key.pem, made on first start; put its public key or node id in
FILE) registers like a worker's, then the loop is claim (POST /v1/audit/claim) -> fetch the base checkpoint,
the shard (checked against its sha256) and the audit material (claimed update and revealed residuals,
safetensors) -> `trainnet.verify.Verifier.check`, the function the coordinator's own loop uses, with the
run's codec and tolerance from the claim -> POST the verdict. Every request retries within a bounded
budget; after `max_failures` audits in a row that could not be checked it gives up. Verdicts are appended
to state_dir/verdicts.jsonl. Exit status: 0 when the run is done, --max-audits is reached or it was
stopped (SIGINT/SIGTERM; a second signal aborts); 1 when the coordinator stayed unreachable or kept
failing; 3 when it refused this node (not a designated verifier, banned, bad join token); 4 when this
node cannot replay the run's tasks faithfully (bf16 tasks need --device cuda).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import torch
from safetensors.torch import load as st_load

from trainnet.data.token_corpus import tokens_from_bytes
from trainnet.models import ModelConfig, build_model
from trainnet.protocol import auth
from trainnet.protocol.messages import TaskSpec
from trainnet.train.local import params_of
from trainnet.verify import Tolerance, Unverifiable, Verifier
from trainnet.worker.client import ApiError, CoordinatorClient, RetryPolicy, Stopped, Unreachable
from trainnet.worker.node import resolve_device
from trainnet.worker.signals import stop_signals
from trainnet.worker.store import ModelFormatError, check_params
from trainnet.worker.versions import VersionFetcher

log = logging.getLogger("trainnet.verifier")

EXIT_OK, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_UNVERIFIABLE = 0, 1, 3, 4
VERDICT_LOG = "verdicts.jsonl"
BASE_CACHE = 2  # base checkpoints kept in memory (audits come oldest first, mostly from few versions)
_SPEC_FIELDS = {f.name for f in dataclasses.fields(TaskSpec)}
_GONE = {404, 409}  # the audit was decided, dropped or our claim lapsed: move on, no verdict
ParamDict = dict[str, torch.Tensor]


@dataclass
class VerifierOptions:
    coordinator: str
    state_dir: Path
    device: str = "cpu"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads (0: torch default)
    max_audits: int | None = None  # stop after deciding this many
    join_token: str | None = None
    retry_budget_s: float = 300.0
    max_wait_s: float = 10.0  # longest sleep between claims that found nothing ready
    max_failures: int = 5  # audits in a row that could not be checked before giving up
    seed: int | None = None  # backoff jitter


class _Refused(Exception):
    """The coordinator refused this node (403)."""


def wire_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """Verifier.check's detail as the verdict endpoint takes it: finite numbers plus `reason` / `which`
    (the server adds steps, codec and the verifier's id itself; inf, e.g. for a zero expected update, is
    not JSON and is left out)."""
    out: dict[str, Any] = {}
    for k, v in detail.items():
        if k in ("reason", "which") and isinstance(v, str):
            out[k] = v
        elif k not in ("steps", "codec") and not isinstance(v, bool) and isinstance(v, int | float) \
                and math.isfinite(v) and abs(v) <= 1e12:
            out[k] = v
    return out


def split_material(data: bytes, template: ParamDict) -> tuple[ParamDict, ParamDict, ParamDict]:
    """GET /v1/audit/{t}/material bytes -> (claimed update, r_in, r_out); ModelFormatError if they do not
    fit the run's model (the coordinator's fault, not the worker's: no verdict then)."""
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error types on malformed input
        raise ModelFormatError(f"audit material: not safetensors ({exc})"[:300]) from None
    parts: dict[str, ParamDict] = {"update": {}, "r_in": {}, "r_out": {}}
    for name, t in tensors.items():
        prefix, _, pname = name.partition("/")
        if prefix not in parts or pname not in template:
            raise ModelFormatError(f"audit material: unexpected tensor {name[:80]!r}")
        parts[prefix][pname] = t
    claimed = check_params(parts["update"], template, "audit material update")
    for key in ("r_in", "r_out"):
        if parts[key]:
            check_params(parts[key] | {k: torch.zeros_like(v) for k, v in template.items() if k not in parts[key]},
                         template, f"audit material {key}")
    return claimed, parts["r_in"], parts["r_out"]


class VerifierNode:
    def __init__(self, opts: VerifierOptions) -> None:
        self.opts = opts
        opts.state_dir.mkdir(parents=True, exist_ok=True)
        self.key = auth.load_or_create_key(opts.state_dir)
        self.stop = threading.Event()
        self.client = CoordinatorClient(opts.coordinator, self.key, retry=RetryPolicy(budget_s=opts.retry_budget_s),
                                        seed=opts.seed, stop=self.stop, on_retry=log.info)
        self.node_id = self.client.node_id
        self.device = resolve_device(opts.device)
        self.info: dict[str, Any] | None = None
        self.template: ParamDict = {}
        self._verifier: Verifier | None = None
        self._bases: dict[int, ParamDict] = {}
        self.decided = 0

    # ------------------------------------------------------------------ lifecycle
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt  # second signal: abort now
        self.stop.set()
        log.info("stopping after the current audit")

    def run(self) -> int:
        """Verify until the run is done, --max-audits, a stop signal, or the coordinator is gone."""
        if self.opts.threads > 0:
            torch.set_num_threads(self.opts.threads)
        with stop_signals(self._on_signal):
            try:
                return self._loop()
            except Stopped:
                return EXIT_OK
            except Unreachable as exc:
                log.error("coordinator unreachable: %s", exc)
                return EXIT_UNREACHABLE
            except _Refused as exc:
                log.error("refused: %s", exc)
                return EXIT_REFUSED
            except Unverifiable as exc:
                log.error("cannot verify this run here: %s", exc)
                return EXIT_UNVERIFIABLE
            finally:
                self.client.close()

    def _loop(self) -> int:
        self.start()
        failures = 0
        while not self.stop.is_set():
            if self.opts.max_audits is not None and self.decided >= self.opts.max_audits:
                return EXIT_OK
            try:
                out = self.step()
            except (ApiError, ModelFormatError, ValueError) as exc:
                failures += 1
                log.warning("audit not checked (%d in a row): %s", failures, exc)
                if failures >= self.opts.max_failures:
                    log.error("giving up after %d audits in a row that could not be checked", failures)
                    return EXIT_UNREACHABLE
                self.stop.wait(min(self.opts.max_wait_s, 0.5 * 2 ** failures))
                continue
            if out is None:
                log.info("the run is done and no audit is left")
                return EXIT_OK
            if isinstance(out, float):
                self.stop.wait(out)
            else:
                failures = 0
        return EXIT_OK

    def start(self) -> None:
        """Read the run (GET /v1/info) and register this node's key."""
        self.info = self.client.info()
        torch.manual_seed(0)  # the init is overwritten by each audit's base parameters
        model = build_model(ModelConfig.from_dict(self.info["model"]))
        self.template = {k: v.detach().clone() for k, v in params_of(model).items()}
        self._model = model
        try:
            self.client.register(join_token=self.opts.join_token, info={"role": "verifier"})
        except ApiError as exc:
            if exc.status == 403:
                raise _Refused(str(exc)) from None
            raise
        log.info("verifier %s registered with run %s", self.node_id, self.info.get("run_id"))

    # ------------------------------------------------------------------ one audit
    def step(self) -> dict[str, Any] | float | None:
        """Claim one audit, recompute it and report the verdict. Returns the verdict record; or the
        seconds to wait when nothing was ready (or the audit went away meanwhile); None when the run is
        done and no audit is left. Raises Unverifiable, Unreachable, Stopped, _Refused; ApiError /
        ModelFormatError when the coordinator's data could not be used."""
        if self.info is None:
            self.start()
        reply = self._call(self.client.audit_claim)
        a = reply.get("audit")
        if not a:
            if reply.get("reason") == "done":
                return None
            wait = reply.get("retry_after_s")
            return min(self.opts.max_wait_s, max(0.05, float(wait))) if isinstance(wait, int | float) else 1.0
        task_id = str(a["task_id"])
        try:
            passed, detail = self._check(a)
        except ApiError as exc:
            if exc.status in _GONE:
                log.info("audit %s went away before it was checked: %s", task_id, exc)
                return 0.0
            raise
        try:
            ack = self._call(lambda: self.client.audit_verdict(task_id, passed, wire_detail(detail)))
        except ApiError as exc:
            if exc.status in _GONE:  # our claim lapsed and another verifier decided, or the node was banned
                log.info("verdict on %s not taken: %s", task_id, exc)
                self._record(a, passed, detail, taken=False)
                return 0.0
            raise
        self.decided += 1
        log.info("audit %s of %s: %s %s", task_id, a["spec"].get("node_id"), "passed" if passed else "FAILED", detail)
        return self._record(a, passed, detail, taken=True, banned=bool(ack.get("banned")))

    def _call(self, fn: Any) -> dict[str, Any]:
        try:
            return fn()
        except ApiError as exc:
            if exc.status == 403:
                raise _Refused(str(exc)) from None
            raise

    def _check(self, a: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        spec = TaskSpec(**{k: v for k, v in a["spec"].items() if k in _SPEC_FIELDS})
        if spec.task_id != a["task_id"]:
            raise ModelFormatError("claim reply: spec and task id disagree")
        base = self._base(int(spec.base_version))
        shard = self._shard(int(spec.shard_id), str(spec.shard_sha256))
        claimed, r_in, r_out = split_material(self.client.audit_material(spec.task_id), self.template)
        v = self._verifier_for(str(a["codec"]), a["tolerance"])
        return v.check(spec, base, shard, claimed, r_in, r_out, {"ef_in": a["ef_in"], "ef_out": a["ef_out"]})

    def _verifier_for(self, codec: str, tol: dict[str, Any]) -> Verifier:
        tolerance = Tolerance(float(tol["rel_error"]), float(tol["min_cosine"]))
        v = self._verifier
        if v is None or v.codec_spec != codec or v.tol != tolerance:
            v = self._verifier = Verifier(self._model, codec, tolerance, device=self.device)
        return v

    def _base(self, version: int) -> ParamDict:
        if version not in self._bases:
            have = max(((v, p) for v, p in self._bases.items() if v <= version), default=None, key=lambda x: x[0])
            self._bases[version] = VersionFetcher(self.client, self.template, self.info.get("signer")).get(
                version, have)
            while len(self._bases) > BASE_CACHE:
                self._bases.pop(min(self._bases))
        return self._bases[version]

    def _shard(self, shard_id: int, sha256: str) -> torch.Tensor:
        data = self.client.shard(shard_id)
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise ModelFormatError(f"shard {shard_id}: sha256 {got[:12]} != the task's {sha256[:12]}")
        d = self.info.get("data") or {}
        return tokens_from_bytes(data, str(d.get("dtype", "uint8")), d.get("vocab_size"))

    def _record(self, a: dict[str, Any], passed: bool, detail: dict[str, Any], taken: bool,
                banned: bool = False) -> dict[str, Any]:
        rec = {"time": time.time(), "task_id": a["task_id"], "node_id": a["spec"].get("node_id"),
               "passed": passed, "taken": taken, "banned": banned, "detail": wire_detail(detail)}
        with open(self.opts.state_dir / VERDICT_LOG, "a") as f:
            f.write(json.dumps(rec) + "\n")
        return rec


@click.command("verifier")
@click.option("--coordinator", default="http://127.0.0.1:8470", show_default=True, help="Coordinator base URL.")
@click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False),
              help="State directory: the node key (node_key.pem) and verdicts.jsonl.")
@click.option("--device", default="cpu", show_default=True, help="auto | cpu | cuda | cuda:N (bf16 runs: cuda)")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="torch threads (0: torch default).")
@click.option("--max-audits", type=click.IntRange(min=1), help="Stop after deciding this many audits.")
@click.option("--join-token", envvar="TRAINNET_JOIN_TOKEN", help="Join token, if the run requires one.")
@click.option("--retry-budget", type=click.FloatRange(min=1.0), default=300.0, show_default=True,
              help="Seconds one request keeps retrying a failing coordinator before giving up.")
@click.option("--log-level", default="info", show_default=True)
def verifier_cmd(coordinator: str, state_dir: str, device: str, threads: int, max_audits: int | None,
                 join_token: str | None, retry_budget: float, log_level: str) -> None:
    """Recompute audited tasks for a coordinator run with --verifiers nodes, and report the verdicts."""
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = VerifierOptions(coordinator=coordinator, state_dir=Path(state_dir).expanduser(), device=device,
                           threads=threads, max_audits=max_audits, join_token=join_token,
                           retry_budget_s=retry_budget)
    try:
        node = VerifierNode(opts)
        click.echo(f"verifier node id {node.node_id}, public key {auth.public_key_hex(node.key)}", err=True)
        code = node.run()
    except ValueError as exc:  # e.g. --device cuda without CUDA
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
