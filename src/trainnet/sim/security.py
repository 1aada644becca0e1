"""The simulator's security layer: malicious workers, the verifier, bans and the attack metrics.

    sec = Security(cfg, model, corpus, coord) if Security.wanted(cfg) else None
    data, steps = sec.malicious_upload(model, spec, base, worker)   # a malicious worker's upload
    delay = sec.after_submit(worker, spec, header_extra, now)      # audit selected -> verify after delay
    sec.verify(task_id, now)                                       # recompute, report, maybe ban
    result |= sec.report(workers, steps_total)                     # banned_nodes, honest_banned, backdoor_asr...

The verifier is a trusted virtual node: an audit completes `steps × step_s / verifier_speed` virtual
seconds after the update was accepted (so a cheater's update is usually merged before its ban, as it
would be in a real run) and its inner steps are counted as verification compute.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from trainnet.config import RunConfig
from trainnet.coordinator.core import Coordinator
from trainnet.data.corpus import Corpus
from trainnet.protocol.messages import TaskSpec
from trainnet.sim.adversary import Adversary, asr_prompts, greedy_continuations
from trainnet.sim.attacks import backdoor_success_rate
from trainnet.sim.upload import Uploader
from trainnet.train.local import ParamDict
from trainnet.verify import CommitmentChain, CommittingUploader, Tolerance, Verifier, reputation


class Security:
    @staticmethod
    def wanted(cfg: RunConfig) -> bool:
        return bool(cfg.sim.attack) or cfg.consensus.verify_rate > 0

    def __init__(self, cfg: RunConfig, model: nn.Module, corpus: Corpus, coord: Coordinator) -> None:
        s, c = cfg.sim, cfg.consensus
        self.cfg, self.model, self.corpus, self.coord = cfg, model, corpus, coord
        self.adv = (Adversary(s.attack, s.workers, s.malicious, c.quorum, s.seed, corpus, s.attack_window,
                              c.aggregator) if s.attack else None)
        self.verifier = (Verifier(model, s.codec, Tolerance(c.verify_rel_error, c.verify_min_cosine))
                         if c.verify_rate > 0 else None)
        self.chain = CommitmentChain()
        self.material: dict[str, tuple[ParamDict, ParamDict, ParamDict]] = {}
        self.pending: dict[str, tuple[tuple[ParamDict, ParamDict, ParamDict], dict]] = {}
        self.bans: list[dict[str, Any]] = []
        self.malicious_ids: set[str] = set()

    def uploader(self) -> Uploader | CommittingUploader:
        return CommittingUploader(self.cfg.sim.codec) if self.verifier else Uploader(self.cfg.sim.codec)

    def is_malicious(self, idx: int) -> bool:
        if self.adv is not None and self.adv.is_malicious(idx):
            self.malicious_ids.add(f"w{idx:03d}")
            return True
        return False

    def malicious_upload(self, model: nn.Module, spec: TaskSpec, base: ParamDict, w: Any) -> tuple[bytes, int]:
        delta, steps = self.adv.update(model, spec, base, w.idx, self.coord.last_merged)
        w.steps_done += steps
        return w.uploader.encode(delta, spec, w.node_id), steps

    def remember(self, task_id: str, base: ParamDict, uploader: Any) -> None:
        """Keep what an audit of this task needs until the coordinator has decided whether to audit it."""
        if self.verifier is not None:
            self.material[task_id] = (base, *uploader.last_residuals)

    def observe_honest(self, flat: Any) -> None:
        if self.adv is not None:
            self.adv.observe_honest(flat)

    def after_submit(self, w: Any, spec: TaskSpec, extra: dict, now: float) -> float | None:
        """Check the residual commitment chain; return the audit delay if the coordinator selected the task."""
        mat = self.material.pop(spec.task_id, None)
        if self.verifier is None:
            return None
        node = self.coord.nodes[w.node_id]
        if self.chain.observe(w.node_id, extra) and not node.banned:
            node.evidence.append({"task_id": spec.task_id, "time": now, "reason": "residual_chain_break"})
            self.coord.ban(w.node_id, "residual commitment chain broken", now)
            self._record_ban(w.node_id, now)
            return None
        if spec.task_id in self.coord.audits and mat is not None:
            self.pending[spec.task_id] = (mat, dict(extra))
            return spec.hparams["steps"] * self.cfg.sim.step_s / self.cfg.sim.verifier_speed
        return None

    def verify(self, task_id: str, now: float) -> None:
        mat, extra = self.pending.pop(task_id)
        audit = self.coord.audits.get(task_id)
        if audit is None:  # dropped with a ban in the meantime
            return
        base, r_in, r_out = mat
        shard = self.corpus.shard(audit.spec.shard_id, expect_sha256=audit.spec.shard_sha256)
        passed, detail = self.verifier.check(audit.spec, base, shard.tokens, audit.claimed, r_in, r_out, extra)
        if self.coord.report_audit(task_id, passed, detail, now):
            self._record_ban(audit.spec.node_id, now)

    def _record_ban(self, node_id: str, now: float) -> None:
        node = self.coord.nodes[node_id]
        self.bans.append({"node_id": node_id, "malicious": node_id in self.malicious_ids,
                          "reason": node.ban_reason, "time": now, "outer_step": self.coord.outer_steps,
                          "evidence": node.evidence[-1] if node.evidence else {}})

    def backdoor_asr(self) -> dict[str, float]:
        """ASR of the final model: share of held-out prompts + trigger whose greedy continuation starts
        with the target; the same prompts without the trigger give the base rate."""
        adv, m = self.adv, self.cfg.model
        val = [self.corpus.shard(i).data for i in self.corpus.manifest.ids("val")]
        n = len(adv.target)
        prompts = asr_prompts(val, self.cfg.sim.asr_prompts, max(1, m.block_size - len(adv.trigger) - n))
        params = self.coord.params()
        cache: dict[bytes, bytes] = {}

        def run(trigger: bytes) -> float:
            full = [p + trigger for p in prompts]
            cache.update(zip(full, greedy_continuations(self.model, params, full, n, m.block_size), strict=True))
            return backdoor_success_rate(lambda prompt, k: cache[prompt], prompts, trigger, adv.target)

        return {"backdoor_asr": run(adv.trigger), "backdoor_base_rate": run(b"")}

    def report(self, workers: list[Any], steps_total: int) -> dict[str, Any]:
        """The security part of the simulator's JSON."""
        coord = self.coord
        mal = sorted(self.malicious_ids)
        banned = [b["node_id"] for b in self.bans]
        verify_steps = self.verifier.steps_recomputed if self.verifier else 0
        out: dict[str, Any] = {
            "attack": self.cfg.sim.attack, "malicious_nodes": mal,
            "banned_nodes": self.bans,
            "honest_banned": sum(1 for b in self.bans if not b["malicious"]),
            "cheaters_banned": sum(1 for b in self.bans if b["malicious"]),
            "cheaters_banned_fraction": (sum(1 for n in mal if n in banned) / len(mal)) if mal else None,
            "rounds_to_ban": [b["outer_step"] for b in self.bans if b["malicious"]],
            "audits_passed": coord.audits_passed, "audits_failed": coord.audits_failed,
            "audits_unfinished": len(coord.audits),
            "verify_steps": verify_steps,
            "verify_cost": verify_steps / max(steps_total, 1),
            "malicious_updates_accepted": sum(coord.nodes[n].updates_accepted for n in mal if n in coord.nodes),
            "reputation": {w.node_id: reputation(coord.nodes[w.node_id]) | {"malicious": w.malicious}
                           for w in workers if w.node_id in coord.nodes},
        }
        if self.adv is not None and self.adv.name == "backdoor":
            out |= self.backdoor_asr()
        return out
