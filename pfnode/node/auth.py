"""Who may do what: tokens with roles, read from a token file.

A token file is TOML, one table per token:

    [[token]]
    name = "etl-client"            # who it is: logs, scoping of packet ids and names, metrics
    roles = ["submit"]             # submit, reactor, admin
    sha256 = "9f86d0..."           # hex SHA-256 of the token itself; the token is not stored
    namespaces = ["team-a"]        # optional: names written "team-a/..." are shared with the
                                   # other holders of team-a (pfnode/core/names.py)

Tokens are long random strings (`new_token()`, `pfnode token new NAME --roles ...`), so a
plain SHA-256 at rest is enough: nothing to brute-force, as with API tokens elsewhere. A
client presents its token as an `Authorization: Bearer <token>` header or in the endpoint
URL (`?token=<token>`), because the spec's reactors and browsers can only choose their URL.

Roles:
- `submit`: submit packets (every group but mc);
- `reactor`: announce capabilities, be sent packets to run, answer them;
- `admin`: `mc:*` (scale, status, and user mc handlers), `rm:alloc`, the `/status` page.

The file is read at start and again on SIGHUP; a file with problems keeps the previous
table in force (and is logged), so a typo cannot lock everyone out.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
import tomllib
import urllib.parse
from typing import Any, Iterable, Mapping

from ..errors import ConfigError

ROLES = ("submit", "reactor", "admin")
NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
TOKEN_PREFIX = "pft_"


@dataclasses.dataclass(frozen=True)
class Identity:
    """An authenticated client: its token's name and roles."""

    name: str
    roles: frozenset[str]
    namespaces: frozenset[str] = frozenset()  # shared namespaces it may use (names "ns/...")

    def may(self, role: str) -> bool:
        return role in self.roles

    @property
    def wire(self) -> tuple[str, tuple[str, ...]]:
        """How a worker is told whose names a packet uses (pipe.Task.principal)."""
        return self.name, tuple(sorted(self.namespaces))

    def limited_to(self, other: "Identity | None") -> "Identity":
        """This identity acting on what `other` triggered (a reaction to `other`'s signal):
        its own name, namespaces and scope, with only the roles both hold."""
        if other is None or other is self:
            return self
        return Identity(self.name, self.roles & other.roles, self.namespaces)

    def __str__(self) -> str:
        return self.name


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
                 "\r": "\\r"}


def toml_string(text: str) -> str:
    """`text` as a TOML basic string: quoted, with the quote, the backslash and every control
    character escaped (TOML 1.0, "String"), so that any name reads back as itself."""
    def escape(char: str) -> str:
        if char in _TOML_ESCAPES:
            return _TOML_ESCAPES[char]
        code = ord(char)
        return f"\\u{code:04X}" if code < 0x20 or code == 0x7F else char
    return '"' + "".join(map(escape, text)) + '"'


def token_entry(name: str, roles: Iterable[str], token: str) -> str:
    """The token file lines for a token: a [[token]] table written with TOML's own string
    escaping (a name may hold quotes, backslashes, anything), checked by reading it back."""
    roles = list(roles)
    entry = (f"[[token]]\nname = {toml_string(name)}\nroles = [{', '.join(map(toml_string, roles))}]\n"
             f"sha256 = {toml_string(token_hash(token))}\n")
    if tomllib.loads(entry) != {"token": [{"name": name, "roles": roles, "sha256": token_hash(token)}]}:
        raise ConfigError(f"cannot write a token entry for the name {name!r}")  # never, but never silently
    return entry


class TokenTable:
    def __init__(self, identities: Mapping[str, Identity], path: str | None = None) -> None:
        self._by_hash = dict(identities)  # hex sha256 -> identity
        self.path = path

    def __len__(self) -> int:
        return len(self._by_hash)

    @classmethod
    def load(cls, path: str) -> "TokenTable":
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"the token file {path} is not valid TOML: {exc}") from None
        return cls(parse_tokens(doc, path), path)

    def lookup(self, token: str | None) -> Identity | None:
        # a lookup by the token's SHA-256: timing reveals nothing about the token itself
        return self._by_hash.get(token_hash(token)) if token else None

    def by_hash(self, digest: str | None) -> Identity | None:
        """Who a token known by its hash is now (its roles may have changed), or None."""
        return self._by_hash.get(digest) if digest else None


def parse_tokens(doc: Mapping[str, Any], path: str = "the token file") -> dict[str, Identity]:
    problems = []
    unknown = sorted(set(doc) - {"token"})
    if unknown:
        problems.append(f"unknown top-level key(s) {', '.join(unknown)}; expected [[token]] tables")
    entries = doc.get("token", [])
    if not isinstance(entries, list):
        problems.append("[[token]] must be an array of tables")
        entries = []
    identities: dict[str, Identity] = {}
    names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"token {i + 1}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: not a table")
            continue
        name, roles, digest = entry.get("name"), entry.get("roles"), entry.get("sha256")
        if isinstance(name, str) and name:
            where = f"token {name!r}"
        extra = sorted(set(entry) - {"name", "roles", "sha256", "namespaces"})
        if extra:
            problems.append(f"{where}: unknown key(s) {', '.join(extra)}")
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: name must be a non-empty string")
            continue
        if name in names:
            problems.append(f"{where}: the name is used twice")
        names.add(name)
        if not isinstance(roles, list) or not roles or not all(r in ROLES for r in roles):
            problems.append(f"{where}: roles must be a non-empty list of {', '.join(ROLES)}")
            continue
        if not isinstance(digest, str) or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            problems.append(f"{where}: sha256 must be 64 lower-case hex digits (pfnode token new prints it)")
            continue
        namespaces = entry.get("namespaces", [])
        if not isinstance(namespaces, list) or not all(isinstance(n, str) and NAMESPACE_RE.fullmatch(n)
                                                       for n in namespaces):
            problems.append(f"{where}: namespaces must be a list of names of 1-64 characters of "
                            "A-Z a-z 0-9 _ . - (names written \"<namespace>/...\" are shared by its holders)")
            continue
        if digest in identities:
            problems.append(f"{where}: the same token as {identities[digest].name!r}")
        identities[digest] = Identity(name, frozenset(roles), frozenset(namespaces))
    if problems:
        raise ConfigError(f"{path} has problems:\n" + "\n".join(f"  - {p}" for p in problems))
    return identities


def token_of(path: str, headers: Any) -> str | None:
    """The token a request presents: `Authorization: Bearer X`, else `?token=X` in its URL."""
    value = None
    if headers is not None:
        try:
            value = headers.get("Authorization") or headers.get("authorization")
        except Exception:
            value = None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if value:
        scheme, _, credentials = value.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    query = urllib.parse.urlsplit(path).query
    if query:
        tokens = urllib.parse.parse_qs(query).get("token")
        if tokens:
            return tokens[0]
    return None


class Access:
    """The node's one answer to "may this identity act in this role": its token table
    (None: no authentication, loopback only, and everyone may everything)."""

    def __init__(self, token_file: str | None) -> None:
        self.token_file = token_file
        self.tokens: TokenTable | None = None

    def load(self) -> None:
        """Read the token file (at start; ConfigError when it cannot be read)."""
        if self.token_file:
            self.tokens = TokenTable.load(self.token_file)

    @property
    def enabled(self) -> bool:
        return self.tokens is not None

    def may(self, identity: Identity | None, role: str) -> bool:
        """Whether `identity` holds `role` (always, without authentication)."""
        return self.tokens is None or (identity is not None and identity.may(role))

    def identify(self, path: str, headers: Any) -> tuple[Identity | None, str | None]:
        """Who a request is (None: unknown) and the token it presented (None: none)."""
        token = token_of(path, headers)
        return (self.tokens.lookup(token) if self.tokens is not None else None), token
