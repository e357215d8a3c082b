"""Handler registry: `register(group, element, fn)` and the `@handler` decorator.

A handler is a plain function `fn(data)` or `fn(data, ctx)`; it runs in a worker
process and returns any JSON-serialisable value (numpy arrays and scalars included).
Handler modules register into the default registry when imported:

    from pfnode import handler

    @handler("df", "double")
    def double(data):
        return [2 * x for x in data]
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import time
from typing import Any, Callable

from .errors import ConfigError
from .protocol import _ELEMENT_RE, GROUPS


@dataclasses.dataclass(frozen=True)
class Context:
    """Packet metadata a handler may ask for by taking a second parameter."""

    packet_id: str
    group: str
    element: str
    priority: int
    metadata: dict | None
    deadline: float  # time.monotonic() value after which the node gives up on the packet

    def remaining_ms(self) -> float:
        return max(0.0, (self.deadline - time.monotonic()) * 1000)


@dataclasses.dataclass(frozen=True)
class HandlerSpec:
    group: str
    element: str
    fn: Callable[..., Any]
    wants_ctx: bool

    @property
    def key(self) -> str:
        return f"{self.group}:{self.element}"

    def __call__(self, data: Any, ctx: Context) -> Any:
        return self.fn(data, ctx) if self.wants_ctx else self.fn(data)


def _wants_ctx(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature take data only
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


class Registry:
    def __init__(self) -> None:
        self._specs: dict[str, HandlerSpec] = {}

    def register(self, group: str, element: str, fn: Callable[..., Any]) -> HandlerSpec:
        if group not in GROUPS:
            raise ConfigError(f"cannot register {group}:{element}: unknown group {group!r}; "
                              f"expected one of {', '.join(sorted(GROUPS))}")
        if not isinstance(element, str) or not _ELEMENT_RE.fullmatch(element):
            raise ConfigError(f"cannot register {group}:{element!r}: element must be 1-64 "
                              "characters of A-Z a-z 0-9 _ . -")
        if not callable(fn):
            raise ConfigError(f"cannot register {group}:{element}: {fn!r} is not callable")
        spec = HandlerSpec(group, element, fn, _wants_ctx(fn))
        existing = self._specs.get(spec.key)
        if existing is not None and existing.fn is not fn:
            raise ConfigError(f"{spec.key} is already registered to {_name(existing.fn)}; "
                              f"refusing to replace it with {_name(fn)}")
        self._specs[spec.key] = spec
        return spec

    def handler(self, group: str, element: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.register(group, element, fn)
            return fn
        return decorate

    def get(self, key: str) -> HandlerSpec | None:
        return self._specs.get(key)

    def keys(self) -> list[str]:
        return sorted(self._specs)


def _name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def load_handler_modules(modules: tuple[str, ...] | list[str]) -> None:
    """Import handler modules; each registers its handlers (into the default registry)
    as a side effect of being imported."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise ConfigError(f"cannot import handler module {name!r}: "
                              f"{type(exc).__name__}: {exc}") from exc


default_registry = Registry()
register = default_registry.register
handler = default_registry.handler
