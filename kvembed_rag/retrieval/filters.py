"""Metadata filters, in the dialect LangChain's vector stores use.

A filter is a callable ``metadata -> bool`` or a dict:

* ``{"lang": "en"}`` -- equality; a list value means membership: ``{"lang": ["en", "de"]}``;
* operators per field: ``{"year": {"$gte": 2020, "$lt": 2024}}`` with ``$eq $ne $gt $gte $lt $lte $in $nin``;
* logic at the top: ``{"$and": [...]}``, ``{"$or": [...]}``, ``{"$not": {...}}``.

Several fields in one dict must all match. A missing field matches only ``$ne`` and ``$nin``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Filter = Mapping[str, Any] | Callable[[dict[str, Any]], bool]

_MISSING = object()
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a is not _MISSING and a > b,
    "$gte": lambda a, b: a is not _MISSING and a >= b,
    "$lt": lambda a, b: a is not _MISSING and a < b,
    "$lte": lambda a, b: a is not _MISSING and a <= b,
    "$in": lambda a, b: a in b,
    "$nin": lambda a, b: a not in b,
}


def compile_filter(spec: Filter | None) -> Callable[[dict[str, Any]], bool] | None:
    """Validate ``spec`` once and return a predicate (None for no filter)."""
    if spec is None:
        return None
    if callable(spec):
        return lambda metadata: bool(spec(metadata))
    if not isinstance(spec, Mapping):
        raise TypeError(f"filter must be a dict or a callable; got {type(spec).__name__}")
    _validate(spec)
    return lambda metadata: _matches(metadata, spec)


def _validate(spec: Mapping[str, Any]) -> None:
    for key, value in spec.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
                raise ValueError(f"{key} takes a list of filters; got {value!r}")
            for sub in value:
                _validate(sub)
        elif key == "$not":
            if not isinstance(value, Mapping):
                raise ValueError(f"$not takes a filter; got {value!r}")
            _validate(value)
        elif key.startswith("$"):
            raise ValueError(f"unknown filter operator {key!r}; use $and, $or, $not or a field name")
        elif isinstance(value, Mapping):
            for op in value:
                if op not in _COMPARISONS:
                    raise ValueError(f"unknown operator {op!r} on field {key!r}; use one of {sorted(_COMPARISONS)}")


def _matches(metadata: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    for key, value in spec.items():
        if key == "$and":
            if not all(_matches(metadata, sub) for sub in value):
                return False
        elif key == "$or":
            if not any(_matches(metadata, sub) for sub in value):
                return False
        elif key == "$not":
            if _matches(metadata, value):
                return False
        else:
            actual = metadata.get(key, _MISSING)
            if isinstance(value, Mapping):
                try:
                    if not all(_COMPARISONS[op](actual, operand) for op, operand in value.items()):
                        return False
                except TypeError:  # comparing incomparable types (a string with a number): no match
                    return False
            elif isinstance(value, (list, tuple, set, frozenset)):
                if actual is _MISSING or actual not in value:
                    return False
            elif actual is _MISSING or actual != value:
                return False
    return True
