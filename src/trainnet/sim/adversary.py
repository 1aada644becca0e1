"""Malicious virtual workers: how they train and what they send, for `trainnet simulate --attack`.

    adv = Adversary("alie", workers=10, malicious=0.3, quorum=4, seed=0, corpus=corpus)
    if adv.is_malicious(w.idx):
        delta = adv.update(model, corpus, spec, base, w.idx, previous_aggregate)
    adv.observe_honest(flat_delta)        # the omniscient view: recent honest updates as received

Two kinds of attack (names from `trainnet.sim.attacks`):
- training attacks (`TRAINING_ATTACKS`): `fewer_steps[:frac=0.5]` trains frac of the claimed steps,
  `random_shard` trains on another training shard, `backdoor[:rate=0.05,boost=1]` trains on the assigned
  shard with `trigger + target` inserted by `make_backdoor_text` and sends its update × boost (boost > 1
  is the model-replacement backdoor of Bagdasaryan et al., AISTATS 2020, arXiv:1807.00459);
- update attacks (every other registered name): the node trains honestly, then sends
  `attack(window, f, ctx)[0]`, where window is the last `attack_window` honest updates the coordinator
  received, f the expected number of attackers in one aggregation, and ctx.own_update its own update.
Malicious nodes are a seeded random subset of round(malicious × workers) workers.
"""

from __future__ import annotations

import random
from collections import deque

import torch
import torch.nn as nn

from trainnet.data.corpus import Corpus
from trainnet.protocol.messages import TaskSpec
from trainnet.sim.attacks import ATTACKS, TRAINING_ATTACKS, AttackContext, make_attack, make_backdoor_text
from trainnet.train.local import ParamDict, TaskHParams, flatten, run_task, unflatten

DEFAULT_TRIGGER = b"<|cf|>"
DEFAULT_TARGET = b"rm -rf"


def parse_spec(spec: str) -> tuple[str, dict[str, object]]:
    """"name:key=value,..." -> (name, params) with numbers parsed; raises ValueError for unknown names."""
    name, _, argtext = spec.partition(":")
    name = name.strip()
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}")
    params: dict[str, object] = {}
    for item in filter(None, (a.strip() for a in argtext.split(","))):
        key, eq, val = item.partition("=")
        if not eq:
            raise ValueError(f"attack parameters must be key=value, got {item!r}")
        try:
            params[key.strip()] = float(val) if "." in val or "e" in val.lower() else int(val)
        except ValueError:
            params[key.strip()] = val.strip()
    return name, params


def choose_malicious(workers: int, fraction: float, seed: int) -> set[int]:
    """A seeded random subset of round(fraction × workers) worker indices."""
    n = round(fraction * workers)
    order = list(range(workers))
    random.Random(seed * 1_000_003 + 29).shuffle(order)
    return set(order[:n])


class Adversary:
    def __init__(self, spec: str, workers: int, malicious: float, quorum: int, seed: int, corpus: Corpus,
                 window: int = 0, aggregator: str = "mean") -> None:
        self.spec = spec
        self.name, self.params = parse_spec(spec)
        self.training = self.name in TRAINING_ATTACKS
        self.fn = None if self.training else make_attack(spec)
        self.malicious = choose_malicious(workers, malicious, seed)
        self.n_total = max(2, quorum)
        self.n_mal = max(1, round(malicious * self.n_total))
        self.window: deque[torch.Tensor] = deque(maxlen=window or self.n_total)
        self.aggregator = aggregator
        self.seed = seed
        self.corpus = corpus
        self.train_ids = corpus.manifest.ids("train")
        self.history: dict[int, dict] = {}
        self.rng = torch.Generator().manual_seed(seed * 7 + 11)
        self._poisoned: dict[int, torch.Tensor] = {}
        if self.name == "backdoor":
            self.trigger = str(self.params.get("trigger", DEFAULT_TRIGGER.decode())).encode()
            self.target = str(self.params.get("target", DEFAULT_TARGET.decode())).encode()
            self.rate = float(self.params.get("rate", 0.05))

    def is_malicious(self, idx: int) -> bool:
        return idx in self.malicious

    def observe_honest(self, flat_delta: torch.Tensor) -> None:
        """Remember an honest update as the coordinator received it (the omniscient attacker's view)."""
        self.window.append(flat_delta.detach().float())

    def update(self, model: nn.Module, spec: TaskSpec, base: ParamDict, idx: int,
               previous_aggregate: torch.Tensor | None = None) -> tuple[ParamDict, int]:
        """The malicious node's update for task `spec` and the inner steps it actually computed."""
        hp = TaskHParams(**spec.hparams)
        shard = self.corpus.shard(spec.shard_id, expect_sha256=spec.shard_sha256)
        tokens = shard.tokens
        if self.name == "fewer_steps":
            frac = float(self.params.get("frac", 0.5))
            hp = TaskHParams(**(spec.hparams | {"steps": max(1, round(hp.steps * frac))}))
        elif self.name == "random_shard":
            others = [s for s in self.train_ids if s != spec.shard_id] or self.train_ids
            rng = random.Random(f"{self.seed}:{spec.task_id}")
            tokens = self.corpus.shard(rng.choice(others)).tokens
        elif self.name == "backdoor":
            tokens = self._poison(spec.shard_id, shard.data)
        result = run_task(model, base, tokens, hp, seed=spec.seed)
        if self.training:
            boost = float(self.params.get("boost", 1.0))
            if boost != 1.0:  # model replacement (Bagdasaryan et al. 2020): scale the poisoned update up
                return {k: v * boost for k, v in result.delta.items()}, hp.steps
            return result.delta, hp.steps
        own = flatten(result.delta)
        honest = torch.stack(list(self.window)) if self.window else own.unsqueeze(0)
        ctx = AttackContext(rng=self.rng, n_total=self.n_total, aggregator_name=self.aggregator,
                            previous_aggregate=previous_aggregate, base_params_flat=flatten(base),
                            history=self.history.setdefault(idx, {}), own_update=own)
        bad = self.fn(honest, self.n_mal, ctx)[0]
        return unflatten(bad.contiguous(), result.delta), hp.steps

    def _poison(self, shard_id: int, data: bytes) -> torch.Tensor:
        if shard_id not in self._poisoned:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + shard_id)
            text = make_backdoor_text(data, self.trigger, self.target, self.rate, gen)
            self._poisoned[shard_id] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        return self._poisoned[shard_id]


@torch.no_grad()
def greedy_continuations(model: nn.Module, params: ParamDict, prompts: list[bytes], n: int,
                         block_size: int) -> list[bytes]:
    """Greedy (argmax) continuation of n bytes for each prompt, in one batch per prompt length."""
    from trainnet.train.local import load_params

    load_params(model, params)
    model.eval()
    out: list[bytes] = [b""] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    for _, idxs in sorted(by_len.items()):
        idx = torch.tensor([list(prompts[i]) for i in idxs], dtype=torch.long)
        start = idx.shape[1]
        for _ in range(n):
            logits = model(idx[:, -block_size:])
            logits = logits[0] if isinstance(logits, tuple) else logits
            idx = torch.cat([idx, logits[:, -1, :].argmax(dim=-1, keepdim=True)], dim=1)
        for row, i in enumerate(idxs):
            out[i] = bytes(idx[row, start:].tolist())
    model.train()
    return out


def asr_prompts(val_data: list[bytes], count: int, length: int) -> list[bytes]:
    """`count` held-out prompts of `length` bytes, cut at evenly spaced positions of the val shards."""
    joined = b"".join(val_data)
    if len(joined) <= length:
        return [joined]
    step = max(1, (len(joined) - length) // max(count, 1))
    return [joined[i:i + length] for i in range(0, step * count, step)][:count]
