"""Bounds on the parameters of river's drift detectors, checked before one is built.

river 0.26 checks few of its detectors' arguments, and some bad values do not
fail until the detector is fed, deep inside the trainer; a few crash the
process. Found by building each detector with edge values and feeding it
3000 examples, each in its own interpreter:

- ``ADWIN(clock=0)`` and ``ADWIN(max_buckets=0)``: a Rust panic
  (``pyo3_runtime.PanicException``, a ``BaseException``) on the first update;
  ``ADWIN(max_buckets=2**32 - 1)``: the process aborts (SIGABRT);
- ``HDDM_A`` / ``HDDM_W`` with a confidence of 0 or outside (0, 1):
  ``ZeroDivisionError`` / ``ValueError`` on the first update;
- ``KSWIN(stat_size=s)`` with ``2 * s > window_size``, ``FHDDM(short_window_size=s)``
  with ``s > sliding_window_size``: ``ValueError`` once the window fills;
- ``nan`` thresholds: a detector that never fires, silently.

Each detector kind has a table of the parameters it accepts
(:data:`DETECTOR_PARAMS`); unknown names, wrong types (no strings for
numbers, no floats for integers), non-finite numbers and values out of the
bounds below are refused. The tables are used for the ``[[model.drift]]``
tables of a model configuration and for a detector built as a nested factory
(:data:`DETECTOR_CLASSES` names river's classes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from schemas.errors import ConfigError

#: Windows kept by a detector: the bound keeps its memory and per-update cost sane.
MAX_WINDOW = 1_000_000
_I32 = (1 << 31) - 1


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class ADWINParams(_Params):
    delta: float = Field(default=0.002, gt=0, lt=1)
    clock: int = Field(default=32, ge=1, le=_I32)
    max_buckets: int = Field(default=5, ge=1, le=1000)
    min_window_length: int = Field(default=5, ge=1, le=_I32)
    grace_period: int = Field(default=10, ge=0, le=_I32)


class PageHinkleyParams(_Params):
    min_instances: int = Field(default=30, ge=1)
    delta: float = Field(default=0.005, ge=0)
    threshold: float = Field(default=50.0, gt=0)
    alpha: float = Field(default=0.9999, gt=0, le=1)
    mode: Literal["up", "down", "both"] = "both"


class KSWINParams(_Params):
    alpha: float = Field(default=0.005, gt=0, le=1)
    window_size: int = Field(default=100, ge=2, le=MAX_WINDOW)
    stat_size: int = Field(default=30, ge=1)
    seed: int | None = Field(default=None, ge=0, lt=1 << 63)

    @model_validator(mode="after")
    def _fits(self) -> KSWINParams:
        # KSWIN samples stat_size values from the window_size - stat_size oldest.
        if 2 * self.stat_size > self.window_size:
            raise ValueError("stat_size must be at most half of window_size")
        return self


class DDMParams(_Params):
    warm_start: int = Field(default=30, ge=0)
    warning_threshold: float = Field(default=2.0, gt=0)
    drift_threshold: float = Field(default=3.0, gt=0)


class EDDMParams(_Params):
    warm_start: int = Field(default=30, ge=0)
    alpha: float = Field(default=0.95, gt=0, le=1)
    beta: float = Field(default=0.9, gt=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> EDDMParams:
        if self.alpha < self.beta:
            raise ValueError("alpha must be greater than or equal to beta")
        return self


class HDDMAParams(_Params):
    drift_confidence: float = Field(default=0.001, gt=0, lt=1)
    warning_confidence: float = Field(default=0.005, gt=0, lt=1)
    two_sided_test: StrictBool = False


class HDDMWParams(HDDMAParams):
    lambda_val: float = Field(default=0.05, ge=0, le=1)


class FHDDMParams(_Params):
    sliding_window_size: int = Field(default=100, ge=1, le=MAX_WINDOW)
    confidence_level: float = Field(default=0.000001, gt=0, lt=1)
    short_window_size: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _fits(self) -> FHDDMParams:
        short = self.short_window_size
        if short is not None and short > self.sliding_window_size:
            raise ValueError("short_window_size must not exceed sliding_window_size")
        return self


#: Parameter table of each detector kind a model configuration may name.
DETECTOR_PARAMS: dict[str, type[_Params]] = {
    "ADWIN": ADWINParams,
    "PageHinkley": PageHinkleyParams,
    "KSWIN": KSWINParams,
    "DDM": DDMParams,
    "EDDM": EDDMParams,
    "HDDM_A": HDDMAParams,
    "HDDM_W": HDDMWParams,
    "FHDDM": FHDDMParams,
}

#: river's detector classes (``module.qualname``) by kind.
DETECTOR_CLASSES: dict[str, str] = {
    "river.drift.adwin.ADWIN": "ADWIN",
    "river.drift.page_hinkley.PageHinkley": "PageHinkley",
    "river.drift.kswin.KSWIN": "KSWIN",
    "river.drift.binary.ddm.DDM": "DDM",
    "river.drift.binary.eddm.EDDM": "EDDM",
    "river.drift.binary.hddm_a.HDDMA": "HDDM_A",
    "river.drift.binary.hddm_w.HDDMW": "HDDM_W",
    "river.drift.binary.fhddm.FHDDM": "FHDDM",
}


def check_detector_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` checked against ``kind``'s table, as given (defaults not added).

    Raises
    ------
    ConfigError
        An unknown kind or parameter, a wrong type, or a value out of bounds;
        the message names the parameter (``ADWIN.clock: ...``).
    """
    table = DETECTOR_PARAMS.get(kind)
    if table is None:
        raise ConfigError(f"unknown drift detector {kind!r}; one of {sorted(DETECTOR_PARAMS)}")
    try:
        table.model_validate(dict(params))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        name = f"{kind}.{where}" if where else kind
        raise ConfigError(f"drift detector parameter {name}: {first['msg']}") from exc
    return dict(params)
