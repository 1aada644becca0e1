"""Verification by recomputation, residual commitments, ban policy and reputation.

    from trainnet.verify import Verifier, Tolerance, CommittingUploader, residual_digest, reputation
    passed, detail = Verifier(model, codec="fp32").check(spec, base, shard_tokens, claimed)

See docs/SECURITY.md, "Verification by recomputation" and "Bans and reputation".
"""

from trainnet.verify.commit import EMPTY_DIGEST, CommittingUploader, residual_digest
from trainnet.verify.policy import reputation
from trainnet.verify.verifier import Tolerance, Unverifiable, Verifier, compare

__all__ = ["EMPTY_DIGEST", "CommittingUploader", "Tolerance", "Unverifiable", "Verifier",
           "compare", "reputation", "residual_digest"]
