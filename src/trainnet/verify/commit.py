"""Worker-side half of verification: commit to the error-feedback residual in every upload.

    up = CommittingUploader("topk:0.1+q4")
    data = up.encode(delta, spec, node_id)   # header extra: ef_in / ef_out = residual_digest(...)
    r_in, r_out = up.last_residuals          # what the worker reveals if this task is audited

Error feedback makes an upload depend on hidden worker state (the residual), so a verifier cannot
recompute it from the task's public inputs alone. The worker therefore commits, in the signed update
header, to the residual it started from (`ef_in`) and the one it ended with (`ef_out`); on audit it
reveals both, and the verifier checks them against the commitments (see verifier.py and
docs/SECURITY.md, "Verification by recomputation").
"""

from __future__ import annotations

import hashlib

import torch

from trainnet.codec import ErrorFeedback
from trainnet.protocol.messages import TaskSpec
from trainnet.protocol.wire import encode_update

ParamDict = dict[str, torch.Tensor]
EMPTY_DIGEST = hashlib.sha256(b"trainnet-ef-v1").hexdigest()  # digest of "no residual yet" (all zeros)


def residual_digest(residuals: ParamDict) -> str:
    """sha256 over (name, shape, float32 little-endian bytes) of every tensor, in sorted name order.

    An empty dict (a worker's first task) and an all-zero residual both digest to EMPTY_DIGEST, so a
    worker with a lossless codec commits to the same value every time."""
    items = [(k, v) for k, v in sorted(residuals.items()) if bool(v.detach().ne(0).any())]
    if not items:
        return EMPTY_DIGEST
    h = hashlib.sha256(b"trainnet-ef-v1")
    for name, t in items:
        data = t.detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode() + b"\0" + repr(tuple(data.shape)).encode() + b"\0")
        h.update(data.numpy().astype("<f4", copy=False).tobytes())
    return h.hexdigest()


def encode_committed(feedback: ErrorFeedback, delta: ParamDict, codec: str
                     ) -> tuple[ParamDict, ParamDict, ParamDict, dict[str, str]]:
    """Encode Δ through error feedback and commit to the residual: (what to send, r_in, r_out, commitments).

    A task whose codec is not the feedback's (the warm start, sent whole) bypasses error feedback and
    leaves the residual unchanged. `commitments` is {"ef_in", "ef_out"} for the update header; r_in / r_out
    are copies, what the worker reveals if the task is audited. The one implementation of what an
    audit replays (verifier.py), shared by the real worker and the simulator."""
    r_in = {k: v.clone() for k, v in feedback.residuals.items()}
    encoded = feedback.compress(delta)[0] if codec == feedback.codec.spec else delta
    r_out = {k: v.clone() for k, v in feedback.residuals.items()}
    return encoded, r_in, r_out, {"ef_in": residual_digest(r_in), "ef_out": residual_digest(r_out)}


class CommittingUploader:
    """An Uploader (sim/upload.py) whose header also carries the residual commitments ef_in / ef_out."""

    def __init__(self, codec: str) -> None:
        self.feedback = ErrorFeedback(codec)
        self.last_residuals: tuple[ParamDict, ParamDict] = ({}, {})

    def encode(self, delta: ParamDict, spec: TaskSpec, node_id: str) -> bytes:
        codec = getattr(spec, "codec", "") or self.feedback.codec.spec
        encoded, r_in, r_out, commit = encode_committed(self.feedback, delta, codec)
        self.last_residuals = (r_in, r_out)
        extra = {"tokens": spec.tokens, "steps": spec.hparams["steps"], **commit}
        return encode_update(encoded, codec, run_id=spec.run_id, node_id=node_id,
                             task_id=spec.task_id, base_version=spec.base_version, extra=extra)

    def refused(self) -> None:
        """The last upload was refused (stale, wrong base, ...): its task is trained again elsewhere, so its
        contribution leaves the residual, which goes back to r_in: the coordinator's chain head is still the
        last accepted ef_out, and the next upload must start from it (what the real worker does too)."""
        r_in, _ = self.last_residuals
        self.feedback.residuals = {k: v.clone() for k, v in r_in.items()}
