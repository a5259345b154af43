"""Every size and range limit of driftloop's events, in one place.

The limits protect consumers from hostile or broken producers (a 50 MB
feature map, a million keys, a 10,000-character model name) and keep every
valid event encodable and decodable: the per-field limits are chosen so that
the largest valid event, with every string made of characters that JSON
escapes to six bytes, still encodes to no more than its type's payload limit.
``tests/unit/test_codec_limits.py`` builds that worst case and checks it.

Lengths of strings count Unicode code points (what Python's ``len`` counts);
payload sizes count UTF-8 bytes.
"""

from __future__ import annotations

from typing import Final

#: Schema versions this build decodes; anything else is a SchemaError.
KNOWN_SCHEMA_VERSIONS: Final[frozenset[int]] = frozenset({1})
#: The version new events are written with.
CURRENT_SCHEMA_VERSION: Final[int] = 1

#: Largest encoded input event (every type but DeadLetter), checked on the raw
#: bytes before parsing. A record over it is dead-lettered as ``too_large``.
MAX_EVENT_BYTES: Final[int] = 2 * 1024 * 1024

# -- Kafka record sizes --------------------------------------------------------
#
# One derivation makes the schema limits, the producers' ``max_request_size``,
# the consumers' fetch sizes and the topics' ``max.message.bytes`` agree:
#
# 1. Every driftloop topic (inputs, outputs, dead letters; the broker-wide
#    ``message.max.bytes`` in docker-compose.yml covers faust's changelogs)
#    admits a record batch of up to TOPIC_MAX_MESSAGE_BYTES = 8 MiB. Apache
#    Kafka's default is about 1 MiB, too small: a valid 2 MiB event must fit,
#    and so must a join-state changelog entry holding one (plus its feedback).
# 2. A record's value is at most MAX_RECORD_VALUE_BYTES = the topic limit
#    minus RECORD_OVERHEAD_BYTES (1 KiB: the 61-byte batch header, the
#    record's varint framing, a key of at most MAX_TOPIC_CHARS bytes on the
#    dead-letter topic and no headers). So an input record can be *larger*
#    than MAX_EVENT_BYTES (up to about 8 MiB) and still arrive: it must be
#    dead-lettered, not stop the agent.
# 3. A DeadLetter encodes to at most MAX_DEAD_LETTER_BYTES = MAX_RECORD_VALUE_BYTES,
#    so it always fits the dead-letter topic. Everything in it but
#    ``value_b64`` (ids, topic, base64 key, reason and field path with every
#    character escaped to six bytes, size, sha256, JSON punctuation) is under
#    DEAD_LETTER_ENVELOPE_BYTES = 16 KiB (tests/unit/test_codec_limits.py
#    builds that worst case). base64 turns 3 bytes into 4 characters, so the
#    raw value keeps at most MAX_DEAD_LETTER_RAW_BYTES =
#    3 * ((MAX_DEAD_LETTER_BYTES - DEAD_LETTER_ENVELOPE_BYTES) // 4) bytes
#    (a multiple of 3: no padding), about 6 MiB: every record up to
#    MAX_EVENT_BYTES is kept whole, a longer one is cut and carries its
#    original size and sha256.
# 4. Producers (kafka-python ``max_request_size``, faust's
#    ``producer_max_request_size``) accept one record of the topic limit:
#    PRODUCER_MAX_REQUEST_BYTES. Consumers fetch at least one such record per
#    partition (``max_partition_fetch_bytes``, faust's
#    ``consumer_max_fetch_size``: CONSUMER_MAX_PARTITION_FETCH_BYTES), so no
#    record the topic admits can leave a consumer stuck in front of it.

#: ``max.message.bytes`` of every driftloop topic (and the broker's ``message.max.bytes``).
TOPIC_MAX_MESSAGE_BYTES: Final[int] = 8 * 1024 * 1024
#: Batch header, record framing and the largest key driftloop writes with a dead letter.
RECORD_OVERHEAD_BYTES: Final[int] = 1024
#: Largest record value any driftloop topic carries.
MAX_RECORD_VALUE_BYTES: Final[int] = TOPIC_MAX_MESSAGE_BYTES - RECORD_OVERHEAD_BYTES
#: Largest encoded DeadLetter, which carries another payload in base64.
MAX_DEAD_LETTER_BYTES: Final[int] = MAX_RECORD_VALUE_BYTES
#: Bound on a DeadLetter's encoding without its ``value_b64`` characters.
DEAD_LETTER_ENVELOPE_BYTES: Final[int] = 16 * 1024
#: Raw bytes a DeadLetter keeps of the payload it captures; longer ones are truncated.
MAX_DEAD_LETTER_RAW_BYTES: Final[int] = 3 * (
    (MAX_DEAD_LETTER_BYTES - DEAD_LETTER_ENVELOPE_BYTES) // 4
)
#: Raw bytes a DeadLetter keeps of the Kafka key it captures.
MAX_DEAD_LETTER_KEY_BYTES: Final[int] = 1024
#: Producers' ``max_request_size``: one record as large as the topics admit.
PRODUCER_MAX_REQUEST_BYTES: Final[int] = TOPIC_MAX_MESSAGE_BYTES
#: Consumers' ``max_partition_fetch_bytes``: at least one record as large as the topics admit.
CONSUMER_MAX_PARTITION_FETCH_BYTES: Final[int] = TOPIC_MAX_MESSAGE_BYTES
#: Raw bytes the join state keeps of a pending record whose bytes differ from
#: its event's canonical encoding (to dead-letter it raw later); the largest
#: valid feedback event is far smaller, so only padding is ever cut.
MAX_PENDING_RAW_BYTES: Final[int] = 8 * 1024

if MAX_EVENT_BYTES > MAX_DEAD_LETTER_RAW_BYTES:  # checked at import, also under python -O
    raise RuntimeError("a valid event must fit a dead letter whole: raise the topic limit")

#: event_id, request_id, example_id, server, actor.
MAX_ID_CHARS: Final[int] = 128
#: model and version names (they become Redis keys and directory names).
MAX_NAME_CHARS: Final[int] = 128
#: Pattern of model and version names: safe as a path segment and a Redis key part.
NAME_PATTERN: Final[str] = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
#: Versions in a pointer's rollback history (``VersionEvent.history``, ``rollback_depth``).
MAX_ROLLBACK_HISTORY: Final[int] = 64
#: Kafka topic names (Kafka's own limit and alphabet).
MAX_TOPIC_CHARS: Final[int] = 249
TOPIC_PATTERN: Final[str] = r"^[A-Za-z0-9._-]+$"
#: Free text: reasons, error messages, checkpoint locations.
MAX_TEXT_CHARS: Final[int] = 1024
#: Dotted path of an offending field in a DeadLetter.
MAX_FIELD_PATH_CHARS: Final[int] = 256
#: error_kind of a DeadLetter: a short snake_case word.
ERROR_KIND_PATTERN: Final[str] = r"^[a-z][a-z0-9_]{0,31}$"

#: Feature maps (InferenceLog.features, TrainingExample.features).
MAX_FEATURES: Final[int] = 512
MAX_FEATURE_KEY_CHARS: Final[int] = 64
#: String values of features, predictions and labels.
MAX_VALUE_CHARS: Final[int] = 256
#: InferenceLog.scores: label -> probability.
MAX_SCORES: Final[int] = 256
MAX_SCORE_LABEL_CHARS: Final[int] = 64
#: CheckpointEvent.metrics: name -> value.
MAX_METRICS: Final[int] = 128
MAX_METRIC_NAME_CHARS: Final[int] = 64

#: Integers travel as JSON numbers; keep them within signed 64 bits so every
#: consumer (and orjson) reads them exactly.
MIN_INT: Final[int] = -(2**63)
MAX_INT: Final[int] = 2**63 - 1
#: Timestamps: epoch milliseconds from 1970 up to the end of year 9999.
MAX_TS_MS: Final[int] = 253_402_300_799_999


#: Characters of base64 for ``n`` raw bytes.
def base64_chars(n: int) -> int:
    """Length of the padded base64 text of ``n`` bytes."""
    return 4 * ((n + 2) // 3)
