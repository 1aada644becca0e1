"""TrainNet: many untrusted machines with consumer GPUs train one language model together.

Quick start (one machine, no download):

    trainnet simulate --config bench/standard.toml

The wire-format helpers are re-exported here (`encode_update`, `decode_update`,
`WireFormatError`), and the drop-in API (`DistributedOptimizer`, `Participant`: your own training loop as
one node, docs/DROPIN.md); they are imported on first use so that `import trainnet` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "encode_update": "trainnet.protocol.wire",
    "decode_update": "trainnet.protocol.wire",
    "WireFormatError": "trainnet.protocol.wire",
    "Participant": "trainnet.dropin",
    "DistributedOptimizer": "trainnet.dropin",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainnet' has no attribute {name!r}")
