"""The simulator's attackers and the attack metrics; the defences are the coordinator's own.

    sec = Security(cfg, corpus, workers)               # marks the malicious workers (seeded)
    delta, steps = sec.malicious_update(model, spec, base, worker)
    sec.observe_honest(upload_bytes)                   # the omniscient attacker's view of honest updates
    result |= sec.report(core, model, final_params, steps_total)   # bans, audits, backdoor ASR, verify cost

Bans, audits, evidence and the residual chain are decided by the engine (core/verification.py) through the
same service layer the server runs; this module only plays the cheaters and measures the outcome.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from trainnet.config import RunConfig
from trainnet.data.corpus import Corpus
from trainnet.protocol.messages import TaskSpec
from trainnet.protocol.wire import decode_update
from trainnet.sim.adversary import Adversary, asr_prompts, greedy_continuations
from trainnet.sim.attacks import backdoor_success_rate
from trainnet.train.local import ParamDict
from trainnet.verify import reputation


class Security:
    def __init__(self, cfg: RunConfig, corpus: Corpus, workers: list[Any]) -> None:
        s, c = cfg.sim, cfg.consensus
        self.cfg, self.corpus = cfg, corpus
        self.adv = (Adversary(s.attack, s.workers, s.malicious, c.quorum, s.seed, corpus, s.attack_window,
                              c.aggregator) if s.attack else None)
        self.malicious_ids: set[str] = set()
        self.ban_steps: dict[str, int] = {}  # node id -> outer step of its ban
        for w in workers:
            if self.adv is not None and self.adv.is_malicious(w.idx):
                w.malicious = True
                self.malicious_ids.add(w.node_id)

    def malicious_update(self, model: nn.Module, spec: TaskSpec, base: ParamDict, w: Any) -> tuple[ParamDict, int]:
        return self.adv.update(model, spec, base, w.idx, None)

    def observe_honest(self, data: bytes) -> None:
        if self.adv is not None and not self.adv.training:
            upd = decode_update(data)
            self.adv.observe_honest(torch.cat([t.reshape(-1).float() for t in upd.tensors.values()]))

    def backdoor_asr(self, model: nn.Module, params: ParamDict) -> dict[str, float]:
        """ASR of the final model: share of held-out prompts + trigger whose greedy continuation starts
        with the target; the same prompts without the trigger give the base rate."""
        adv, m = self.adv, self.cfg.model
        val = [self.corpus.shard(i).data for i in self.corpus.manifest.ids("val")]
        n = len(adv.target)
        prompts = asr_prompts(val, self.cfg.sim.asr_prompts, max(1, m.block_size - len(adv.trigger) - n))
        cache: dict[bytes, bytes] = {}

        def run(trigger: bytes) -> float:
            full = [p + trigger for p in prompts]
            cache.update(zip(full, greedy_continuations(model, params, full, n, m.block_size), strict=True))
            return backdoor_success_rate(lambda prompt, k: cache[prompt], prompts, trigger, adv.target)

        return {"backdoor_asr": run(adv.trigger), "backdoor_base_rate": run(b"")}

    def report(self, core: Any, model: nn.Module, params: ParamDict, steps_total: int) -> dict[str, Any]:
        """The security part of the simulator's JSON (from the engine's records)."""
        mal = sorted(self.malicious_ids)
        bans = []
        for n in core.nodes.values():
            if n.banned:
                bans.append({"node_id": n.node_id, "malicious": n.node_id in self.malicious_ids,
                             "reason": n.ban_reason, "evidence": n.evidence[-1] if n.evidence else {}})
        banned = {b["node_id"] for b in bans}
        out: dict[str, Any] = {
            "attack": self.cfg.sim.attack, "malicious_nodes": mal, "banned_nodes": bans,
            "honest_banned": sum(1 for b in bans if not b["malicious"]),
            "cheaters_banned": sum(1 for b in bans if b["malicious"]),
            "cheaters_banned_fraction": (sum(1 for n in mal if n in banned) / len(mal)) if mal else None,
            # the outer step at which each banned cheater was banned (the simulator records it as it happens)
            "rounds_to_ban": [self.ban_steps[n] for n in mal if n in self.ban_steps],
            "audits_passed": core.audits_passed, "audits_failed": core.audits_failed,
            "audits_unfinished": len(core.audits), "verify_steps": core.verify_steps,
            "verify_cost": core.verify_steps / max(steps_total, 1),
            "malicious_updates_accepted": sum(core.nodes[n].updates_accepted for n in mal if n in core.nodes),
            "reputation": {n.node_id: reputation(n) | {"malicious": n.node_id in self.malicious_ids}
                           for n in core.nodes.values()},
        }
        if self.adv is not None and self.adv.name == "backdoor":
            out |= self.backdoor_asr(model, params)
        return out
