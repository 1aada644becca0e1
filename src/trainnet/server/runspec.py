"""Everything a run's processes derive from its RunConfig, in one place: the engine's config, the corpus, the
model (built through the one call site), its parameter layout, the held-out evaluation, the run's identity.

    spec = RunSpec.load(load_config("run.toml"))
    spec.ccfg                     # CoordinatorConfig for the engine
    spec.layout, spec.init_params()                      # the flat parameter layout; version 0's weights
    spec.heldout_loss(params)    # THE held-out figure: same windows in the simulator, server, demo, report
    spec.fingerprint()           # what a state store must agree with before a coordinator may continue it

The coordinator, the aggregators, the evaluator and the simulator all build a RunSpec from the same TOML, so
they agree on the layout and the data without talking to each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from trainnet.aggregate.layout import ParamDict, ParamLayout
from trainnet.config import RunConfig
from trainnet.core.records import CoordinatorConfig
from trainnet.data.corpus import Corpus, load_run_corpus
from trainnet.models import build_model as _build
from trainnet.models import model_identity
from trainnet.train.local import evaluate, params_of

EVAL_SEED = 1234  # the held-out windows: fixed, so every evaluation of every version uses the same ones


def task_precision(cfg: RunConfig) -> str:
    """The precision every task of the run trains in: inner.precision, with "auto" pinned to "fp32" when tasks
    are verified (the worker's device must not decide numerics that an audit replays)."""
    p = cfg.inner.precision
    return "fp32" if p == "auto" and cfg.consensus.verify_rate > 0 else p


def coordinator_config(cfg: RunConfig) -> CoordinatorConfig:
    c, i, s, a = cfg.consensus, cfg.inner, cfg.sim, cfg.aggregate
    return CoordinatorConfig(
        run_id=cfg.name, tokens_target=s.tokens, seed=s.seed, h=c.h, h_start=c.h_start, h_ramp=c.h_ramp,
        batch_size=i.batch_size, seq_len=cfg.model.block_size, lr=i.lr, lr_warmup=i.warmup_tokens,
        min_lr_ratio=i.min_lr_ratio, weight_decay=i.weight_decay, beta1=i.beta1, beta2=i.beta2,
        grad_clip=i.grad_clip, precision=task_precision(cfg), codec=s.codec, outer_lr=c.outer_lr,
        outer_momentum=c.outer_momentum, nesterov=c.nesterov, quorum=c.quorum, grace_s=c.grace_s,
        min_updates=c.min_updates, max_staleness=c.max_staleness, staleness_power=c.staleness_power,
        stale_mode=c.stale_mode, partial_scaling=c.partial_scaling, token_weighting=c.token_weighting,
        aggregator=c.aggregator, target_staleness=c.target_staleness, lease_s=c.lease_s,
        max_leases_per_node=c.max_leases_per_node, warm_start_tokens=round(c.warm_start * s.tokens),
        verify_rate=c.verify_rate, verify_probation=c.verify_probation, ban_after_failures=c.ban_after_failures,
        reveal_s=c.reveal_s, audit_key=c.audit_key or "change-me", shard_groups=0 if s.iid else s.workers,
        shards=a.shards, publish_codec=a.publish_codec, full_every=a.full_every, merge_lease_s=a.merge_lease_s,
        block=a.block,
    )


def build_model(cfg: RunConfig, seed: int | None = None) -> torch.nn.Module:
    """The run's model (through the spec registry: gpt-bytes or any transformers causal LM), initialised from
    `seed` (default: the run seed), or from `model.init` when set."""
    return _build(cfg.model, seed=cfg.sim.seed if seed is None else seed)


@dataclass
class RunSpec:
    cfg: RunConfig
    ccfg: CoordinatorConfig
    corpus: Corpus

    @classmethod
    def load(cls, cfg: RunConfig, corpus: Corpus | None = None) -> RunSpec:
        return cls(cfg, coordinator_config(cfg), corpus or load_run_corpus(cfg))

    @cached_property
    def template(self) -> ParamDict:
        """The initial weights (deterministic from the seed). Held only where set or asked for: the coordinator
        and the aggregators need names and shapes (`shapes`, `layout`), not a copy of the model."""
        return params_of(build_model(self.cfg))

    @cached_property
    def shapes(self) -> ParamDict:
        """Parameter names and shapes as storage-free meta tensors (a 1B model's fp32 copy is 4 GB per process)."""
        if "template" not in self.__dict__:
            try:
                with torch.device("meta"):
                    return {k: p.detach() for k, p in build_model(self.cfg).named_parameters()}
            except Exception:  # a spec that cannot be built on the meta device (e.g. loading a checkpoint)
                pass
        return {k: torch.empty(v.shape, device="meta") for k, v in self.template.items()}

    @cached_property
    def layout(self) -> ParamLayout:
        return ParamLayout.of(self.shapes)

    def init_params(self) -> ParamDict:
        if "template" in self.__dict__:  # set by the simulator's warm start, or already built
            return {k: v.clone() for k, v in self.template.items()}
        return params_of(build_model(self.cfg))  # not cached: it is needed once, by the init job

    def model_info(self) -> dict[str, Any]:
        """The model config as workers get it in /v1/info (ModelConfig.from_dict reads it back)."""
        return self.cfg.model.to_dict()

    def data_info(self) -> dict[str, Any]:
        """What a worker needs to turn shard bytes into tokens (dtype, vocabulary, tokenizer hash)."""
        return self.corpus.info()

    @cached_property
    def val_tokens(self) -> list[torch.Tensor]:
        return [self.corpus.shard(i).tokens for i in self.corpus.manifest.ids("val")]

    def heldout_loss(self, params: ParamDict, model: torch.nn.Module | None = None) -> float:
        """Mean loss (nats/token) on the run's fixed held-out windows."""
        s = self.cfg.sim
        model = model or build_model(self.cfg, seed=0)
        return evaluate(model, params, self.val_tokens, s.eval_batches, s.eval_batch_size, self.cfg.model.block_size,
                        seed=EVAL_SEED)

    def fingerprint(self) -> dict[str, Any]:
        coordinator = self.ccfg.to_doc()
        coordinator.pop("audit_key")  # a secret, and not a setting of the run
        return {"run": self.cfg.name, "model": model_identity(self.cfg.model), "coordinator": coordinator,
                "manifest_root": self.corpus.manifest.root_hash, "numel": self.layout.numel,
                "tokenizer": (self.data_info().get("tokenizer") or {}).get("sha256")}
