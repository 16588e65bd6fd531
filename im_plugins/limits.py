"""The push APIs' request size limits, derived from ``--max-message-size`` in one
place so gRPC and HTTP accept the same payloads (docs/api.md, "Limits")."""

from __future__ import annotations

#: Room around the payload for the rest of a request: targets (user ids up to
#: ``max_user_id_length``, tags), field names, JSON punctuation, protobuf framing.
ENVELOPE = 1 << 20


def request_limit(max_message_size: int, *, base64: bool = False) -> int:
    """Bytes of one request that may carry a payload of ``max_message_size`` bytes;
    ``base64=True`` for JSON, where ``data_b64`` is 4/3 of the payload."""
    payload = 4 * -(-max_message_size // 3) if base64 else max_message_size
    return payload + ENVELOPE
