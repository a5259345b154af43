"""The attribution joiner: pairs inference logs with their feedback.

The logic is plain and synchronous (:class:`AttributionJoiner`) over a
storage seam (:class:`PendingStore`); ``streams/joiner.py`` runs it as a
faust agent on changelog-backed tables.
"""

from __future__ import annotations

from services.attribution.config import FeedbackPolicy, JoinerConfig, NoFeedbackPolicy
from services.attribution.expiry import (
    DEFAULT_INPUTS,
    FEEDBACK,
    INFERENCE,
    ExpiryIndex,
    Watermarks,
)
from services.attribution.joiner import (
    OWN,
    AttributionJoiner,
    Emit,
    Outcome,
    Own,
    Reject,
    Scored,
)
from services.attribution.routing import (
    Forward,
    Marker,
    MarkerSchedule,
    RoutedJoin,
    join_partition,
    source_input,
    source_inputs,
)
from services.attribution.state import (
    InMemoryPendingStore,
    PendingFeedback,
    PendingRequest,
    PendingStore,
    SourceRef,
)
from services.attribution.stats import JoinStats, LatencyStats

__all__ = [
    "DEFAULT_INPUTS",
    "FEEDBACK",
    "INFERENCE",
    "OWN",
    "AttributionJoiner",
    "Emit",
    "ExpiryIndex",
    "FeedbackPolicy",
    "Forward",
    "InMemoryPendingStore",
    "JoinStats",
    "JoinerConfig",
    "LatencyStats",
    "Marker",
    "MarkerSchedule",
    "NoFeedbackPolicy",
    "Outcome",
    "Own",
    "PendingFeedback",
    "PendingRequest",
    "PendingStore",
    "Reject",
    "RoutedJoin",
    "Scored",
    "SourceRef",
    "Watermarks",
    "join_partition",
    "source_input",
    "source_inputs",
]
