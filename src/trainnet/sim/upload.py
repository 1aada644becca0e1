"""What a simulated worker uploads: the update encoded exactly as a real worker sends it.

    up = Uploader("topk:0.015+q2")        # one per worker: error feedback lives on the worker
    data = up.encode(delta, spec, node_id)  # bytes in the update wire format
    delta_seen = decode_upload(data)        # what the coordinator decodes (validated, never unpickled)

Bytes are counted from the encoded buffer itself, never computed from a formula.
"""

from __future__ import annotations

import torch

from trainnet.codec import ErrorFeedback
from trainnet.protocol.messages import TaskSpec
from trainnet.protocol.wire import decode_update, encode_update


class Uploader:
    def __init__(self, codec: str) -> None:
        self.feedback = ErrorFeedback(codec)

    def encode(self, delta: dict[str, torch.Tensor], spec: TaskSpec, node_id: str) -> bytes:
        codec = spec.codec or self.feedback.codec.spec
        if codec == self.feedback.codec.spec:
            encoded, _ = self.feedback.compress(delta)
        else:  # a task with its own codec (the warm start, sent whole) bypasses error feedback
            encoded = delta
        return encode_update(encoded, codec, run_id=spec.run_id, node_id=node_id,
                             task_id=spec.task_id, base_version=spec.base_version,
                             extra={"tokens": spec.tokens, "steps": spec.hparams["steps"]})


def decode_upload(data: bytes) -> dict[str, torch.Tensor]:
    return decode_update(data).tensors
