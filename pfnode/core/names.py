"""Whose a name is: the one rule that keeps principals' names apart, pure.

Every name a packet creates or uses — a topic, a barrier, a lock (`rm:lock` and
`metadata.lock`), a buffer, a cache key, a reaction subscription — belongs to a principal:

- Without a token file (loopback, one tenant) a name is just itself: every client of the
  node shares it, as before tenants existed.
- With tokens, a name is its principal's own (the token's name): alice's topic "jobs" and
  bob's topic "jobs" are two topics; neither sees, feeds, joins, takes or frees the other's.
- A name written `<namespace>/<rest>` whose namespace the principal's token grants
  (`namespaces = ["team-a"]` in the token file) is that namespace's: every holder of
  team-a shares "team-a/jobs", and nobody else sees it. A name whose first part is not a
  namespace the principal holds is the principal's own, like any other
  ("team-a/jobs" of a token without team-a is that token's private name).

`qualify` gives the key a name is stored under: `@<principal>/<name>` for a principal's
own, `#<namespace>/<rest>` for a shared one, the name itself without tokens. Token names
and namespaces are distinct kinds (`@`, `#`), so no principal's own name can collide with
a namespace's.
"""
from __future__ import annotations

from typing import Any, NamedTuple

PRIVATE, SHARED = "@", "#"


class Principal(NamedTuple):
    """Who a name belongs to, as a worker is told it with each task (pipe.Task.principal)."""

    name: str
    namespaces: frozenset[str] = frozenset()


def qualify(name: str, principal: Any) -> str:
    """The key `name` is stored under for `principal` (an identity with `name` and
    `namespaces`; None without tokens)."""
    if principal is None:
        return name
    space, slash, rest = name.partition("/")
    if slash and rest and space in principal.namespaces:
        return f"{SHARED}{space}/{rest}"
    return f"{PRIVATE}{principal.name}/{name}"


def shown(key: str) -> str:
    """The name a key was made from, as its principal wrote it."""
    if key[:1] == SHARED:
        return key[1:]
    if key[:1] == PRIVATE:
        return key.partition("/")[2]
    return key


def space_of(key: str) -> str | None:
    """The namespace a key is shared in, or None (a principal's own, or no tokens)."""
    return key[1:].partition("/")[0] if key[:1] == SHARED else None
