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

#: Largest encoded event, checked on the raw bytes before parsing.
MAX_EVENT_BYTES: Final[int] = 2 * 1024 * 1024
#: Largest encoded DeadLetter, which carries another payload in base64.
MAX_DEAD_LETTER_BYTES: Final[int] = 4 * 1024 * 1024
#: Raw bytes a DeadLetter keeps of the payload it captures; longer ones are truncated.
MAX_DEAD_LETTER_RAW_BYTES: Final[int] = MAX_EVENT_BYTES
#: Raw bytes a DeadLetter keeps of the Kafka key it captures.
MAX_DEAD_LETTER_KEY_BYTES: Final[int] = 1024

#: event_id, request_id, example_id, server, actor.
MAX_ID_CHARS: Final[int] = 128
#: model and version names (they become Redis keys and directory names).
MAX_NAME_CHARS: Final[int] = 128
#: Pattern of model and version names: safe as a path segment and a Redis key part.
NAME_PATTERN: Final[str] = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
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
