"""Isotropy calibration of an embedder's vectors: the maths (:mod:`.transforms`) and its files (:mod:`.files`)."""

from ..errors import PostprocessMismatchError
from .files import (
    FORMAT,
    SHIPPED_DIR,
    calibration_query_mean,
    load,
    model_default,
    read_header,
    resolve_stats,
    save,
    shipped_default,
    shipped_stats,
    stats_key,
)
from .transforms import KINDS, PostprocessSpec, PostprocessStats, apply, check_determined, fit, parse_spec, spec_text

__all__ = [
    "FORMAT",
    "KINDS",
    "SHIPPED_DIR",
    "PostprocessMismatchError",
    "PostprocessSpec",
    "PostprocessStats",
    "apply",
    "calibration_query_mean",
    "check_determined",
    "fit",
    "load",
    "model_default",
    "parse_spec",
    "read_header",
    "resolve_stats",
    "save",
    "shipped_default",
    "shipped_stats",
    "spec_text",
    "stats_key",
]
