"""TrainNet protocol: update wire format (wire.py); messages live in messages.py beside it.

    from trainnet.protocol import encode_update, decode_update, WireFormatError
"""

from trainnet.protocol.wire import (
    DecodedUpdate,
    WireFormatError,
    WireHeader,
    WireLimits,
    decode_header,
    decode_update,
    decode_update_encoded,
    encode_update,
    encoded_size_bits_per_param,
)

__all__ = [
    "DecodedUpdate",
    "WireFormatError",
    "WireHeader",
    "WireLimits",
    "decode_header",
    "decode_update",
    "decode_update_encoded",
    "encode_update",
    "encoded_size_bits_per_param",
]
