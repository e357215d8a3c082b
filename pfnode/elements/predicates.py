"""A placeholder until the predicate language lands (helper branch elements-data)."""
from __future__ import annotations

from typing import Any

from .base import ElementError

_OPS = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b}


def _resolve(value: Any, path: str) -> Any:
    for part in [p for p in path.split("/") if p]:
        if isinstance(value, dict):
            value = value[part]
        elif isinstance(value, list):
            value = value[int(part)]
        else:
            raise KeyError(part)
    return value


def validate(predicate: Any, field: str = "test") -> None:
    if not isinstance(predicate, dict) or predicate.get("op") not in _OPS:
        raise ElementError(f"{field}.op", f"must be one of {', '.join(_OPS)}")


def evaluate(predicate: dict, value: Any) -> bool:
    try:
        return bool(_OPS[predicate["op"]](_resolve(value, predicate.get("path", "")), predicate.get("value")))
    except (KeyError, IndexError, ValueError, TypeError):
        return False
