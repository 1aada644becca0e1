"""Update compression codecs and worker-side error feedback.

    from trainnet.codec import parse_codec, ErrorFeedback
    codec = parse_codec("topk:0.015+q2")
    enc = codec.encode(delta_tensor); approx = codec.decode(enc)
    ef = ErrorFeedback("topk:0.015+q2"); encoded, sent = ef.compress(delta)

Spec grammar and packed layouts: docs/PROTOCOL.md, "Update wire format".
"""

from trainnet.codec.base import Codec, EncodedTensor, PartSpec
from trainnet.codec.feedback import ErrorFeedback
from trainnet.codec.spec import parse_codec

__all__ = ["Codec", "EncodedTensor", "ErrorFeedback", "PartSpec", "parse_codec"]
