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
from .core.protocol import _ELEMENT_RE, GROUPS
from .core.scheduler import LANES


# Where a group's packets run unless the handler says otherwise. co and mc user
# handlers run on the df lane; the node's own co/mc built-ins run in the front.
DEFAULT_LANE = {"cf": "cf", "df": "df", "ed": "ed", "rm": "rm", "co": "df", "mc": "df"}


@dataclasses.dataclass(frozen=True)
class Context:
    """Packet metadata a handler may ask for by taking a second parameter."""

    packet_id: str
    group: str
    element: str
    priority: int
    metadata: dict | None
    deadline: float  # time.monotonic() value after which the node gives up on the packet
    dependencies: dict = dataclasses.field(default_factory=dict)  # dependency id -> its result data
    principal: Any = None  # whose names the packet uses (core/names.Principal; None without tokens)
    max_result_bytes: int | None = None  # a result larger than this is answered PF413 (the node's frame limit)

    def remaining_ms(self) -> float:
        return max(0.0, (self.deadline - time.monotonic()) * 1000)

    def buffer(self, name: str):
        """The node's shared-memory array `name` (made by rm:alloc) as a numpy array over
        the shared memory, no copy: writes are seen by every worker. With tokens, the name
        is the packet's submitter's (or a namespace it holds: pfnode/core/names.py), as
        rm:alloc made it. KeyError if none."""
        from .core.names import qualify
        from .pool.buffers import buffer

        return buffer(qualify(name, self.principal))


@dataclasses.dataclass(frozen=True)
class HandlerSpec:
    group: str
    element: str
    fn: Callable[..., Any]
    wants_ctx: bool
    lane: str = "df"
    timeout_ms: int | None = None  # default deadline for its packets (a packet's own wins)
    memory_limit_mb: int | None = None  # address space it may add to its worker
    standard: bool = False  # one of the spec's standard elements: any other handler for its key replaces it

    @property
    def key(self) -> str:
        return f"{self.group}:{self.element}"

    def options(self) -> dict[str, Any]:
        options = {"lane": self.lane, "timeout_ms": self.timeout_ms, "memory_limit_mb": self.memory_limit_mb}
        if self.standard:
            options["standard"] = True
        return options

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

    def register(self, group: str, element: str, fn: Callable[..., Any], *, lane: str | None = None,
                 timeout_ms: int | None = None, memory_limit_mb: int | None = None,
                 standard: bool = False) -> HandlerSpec:
        """Register `fn` for group:element. A second registration of the same key is refused,
        unless one of the two is a standard element (`standard`): a user's handler replaces
        the standard one whichever comes first, as the spec's own usage example does with
        df:transform."""
        if group not in GROUPS:
            raise ConfigError(f"cannot register {group}:{element}: unknown group {group!r}; "
                              f"expected one of {', '.join(sorted(GROUPS))}")
        if not isinstance(element, str) or not _ELEMENT_RE.fullmatch(element):
            raise ConfigError(f"cannot register {group}:{element!r}: element must be 1-64 "
                              "characters of A-Z a-z 0-9 _ . -")
        if not callable(fn):
            raise ConfigError(f"cannot register {group}:{element}: {fn!r} is not callable")
        lane = lane or DEFAULT_LANE[group]
        if lane not in LANES:
            raise ConfigError(f"cannot register {group}:{element}: unknown lane {lane!r}; "
                              f"expected one of {', '.join(LANES)}")
        for name, value in (("timeout_ms", timeout_ms), ("memory_limit_mb", memory_limit_mb)):
            if value is not None and (type(value) is not int or value <= 0):
                raise ConfigError(f"cannot register {group}:{element}: {name} must be a positive integer")
        spec = HandlerSpec(group, element, fn, _wants_ctx(fn), lane, timeout_ms, memory_limit_mb, standard)
        existing = self._specs.get(spec.key)
        if existing is not None and standard:
            return existing  # a user's handler, or this standard element registered before
        if existing is not None and not existing.standard and (existing.fn is not fn
                                                                 or existing.options() != spec.options()):
            raise ConfigError(f"{spec.key} is already registered to {_name(existing.fn)}; "
                              f"refusing to replace it with {_name(fn)}")
        self._specs[spec.key] = spec
        return spec

    def handler(self, group: str, element: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of `register`; takes the same options (lane, timeout_ms, memory_limit_mb)."""
        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.register(group, element, fn, **options)
            return fn
        return decorate

    def get(self, key: str) -> HandlerSpec | None:
        return self._specs.get(key)

    def keys(self) -> list[str]:
        return sorted(self._specs)

    def describe(self) -> dict[str, dict[str, Any]]:
        """key -> options, as a worker reports them to the front."""
        return {key: self._specs[key].options() for key in sorted(self._specs)}


def _name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


# The spec's standard elements that run in workers (pfnode/elements/data.py), imported on
# their first packet so that a worker that never runs one never loads numpy for them.
STANDARD_HANDLERS = {"df:produce": "produce", "df:transform": "transform", "df:reduce": "reduce"}


def _standard(name: str) -> Callable[[Any], Any]:
    def run(data, ctx):
        from .elements.worker import data as elements_data

        if name == "produce":  # it refuses up front what would pass the node's result limit
            return elements_data.produce(data, max_result_bytes=ctx.max_result_bytes)
        return getattr(elements_data, name)(data)
    run.__qualname__ = run.__name__ = name
    run.__module__ = "pfnode.elements.worker.data"
    return run


def register_standard(registry: Registry) -> None:
    """Register the standard worker elements into `registry`, each replaced by any other
    handler of its key (whether that registers before or after)."""
    for key, name in STANDARD_HANDLERS.items():
        group, _, element = key.partition(":")
        registry.register(group, element, _standard(name), standard=True)


def load_handler_modules(modules: tuple[str, ...] | list[str]) -> None:
    """Import handler modules; each registers its handlers (into the default registry)
    as a side effect of being imported. (`pfnode.elements.worker.standard` registers the standard
    worker elements: the pool puts it first unless --no-data-elements.)"""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise ConfigError(f"cannot import handler module {name!r}: "
                              f"{type(exc).__name__}: {exc}") from exc


default_registry = Registry()
register = default_registry.register
handler = default_registry.handler
