"""Tenants (issue 18, items 1-4): every name is its principal's, a reaction cannot do more
than whoever triggered it, outputs stay within the frame limit. Each test runs a real node
in this process (real workers) with a token file: alice and bob (submit), root (admin,
submit), carol and dave (submit, sharing the namespace team-a)."""
from __future__ import annotations

import asyncio
import contextlib
import itertools

import pytest

from pfnode.core.names import Principal, qualify, shown, space_of
from pfnode.node.auth import new_token, parse_tokens, token_hash
from tests.inproc import RecordingLink, started_node

ROLES = {"alice": ["submit"], "bob": ["submit"], "root": ["admin", "submit"], "carol": ["submit"],
         "dave": ["submit"], "ops": ["admin", "submit"]}
NAMESPACES = {"carol": ["team-a"], "dave": ["team-a"], "ops": ["ops"], "bob": ["ops"]}
TOKENS = {name: new_token() for name in ROLES}
_ids = itertools.count(1)


def token_file(tmp_path) -> str:
    lines = []
    for name, roles in ROLES.items():
        listed = ", ".join(f'"{r}"' for r in roles)
        spaces = ", ".join(f'"{n}"' for n in NAMESPACES.get(name, ()))
        lines.append(f'[[token]]\nname = "{name}"\nroles = [{listed}]\nsha256 = "{token_hash(TOKENS[name])}"\n'
                     f'namespaces = [{spaces}]\n')
    path = tmp_path / "tokens.toml"
    path.write_text("\n".join(lines))
    return str(path)


class Client:
    """One principal's connection to the in-process node."""

    def __init__(self, node, name: str) -> None:
        self.link = RecordingLink(node, name)
        self.link.request_headers = {"Authorization": f"Bearer {TOKENS[name]}"}
        node.on_open(self.link)
        self.seq = itertools.count(1)

    def send(self, key: str, data, **fields) -> int:
        group, _, element = key.partition(":")
        seq = next(self.seq)
        self.link.submit(seq, {"id": f"p{next(_ids)}", "group": group, "element": element, "data": data, **fields})
        return seq

    async def call(self, key: str, data, timeout_s: float = 10.0, **fields) -> dict:
        return (await self.link.reply(self.send(key, data, **fields), timeout_s))["payload"]


@contextlib.asynccontextmanager
async def tenants(tmp_path, **settings):
    async with started_node(token_file=token_file(tmp_path), workers=1,
                            handler_modules=("pfnode.handlers.examples", "tests.handlers_testing"),
                            **settings) as node:
        yield node, {name: Client(node, name) for name in ROLES}


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------- the rule, pure
def test_a_name_is_its_principals_unless_it_is_in_a_namespace_the_principal_holds():
    alice, carol = Principal("alice"), Principal("carol", frozenset({"team-a"}))
    assert qualify("jobs", None) == "jobs"  # no tokens: one tenant, names as they are
    assert qualify("jobs", alice) != qualify("jobs", carol)
    assert qualify("team-a/jobs", carol) == qualify("team-a/jobs", Principal("dave", frozenset({"team-a"})))
    assert qualify("team-a/jobs", alice) not in (qualify("team-a/jobs", carol), "team-a/jobs")
    assert space_of(qualify("team-a/jobs", carol)) == "team-a" and space_of(qualify("jobs", carol)) is None
    for name in ("jobs", "team-a/jobs", "a/b/c", "team-a/"):
        for who in (None, alice, carol):
            assert shown(qualify(name, who)) == name, (name, who)
    # a principal named like a namespace cannot reach it
    assert qualify("x", Principal("team-a")) != qualify("team-a/x", carol)


def test_the_token_file_grants_namespaces_and_checks_them():
    token = new_token()
    (identity,) = parse_tokens({"token": [{"name": "c", "roles": ["submit"], "sha256": token_hash(token),
                                           "namespaces": ["team-a", "b.c"]}]}).values()
    assert identity.namespaces == {"team-a", "b.c"}
    with pytest.raises(Exception, match="namespaces must be"):
        parse_tokens({"token": [{"name": "c", "roles": ["submit"], "sha256": token_hash(token),
                                 "namespaces": ["a/b"]}]})
    limited = identity.limited_to(parse_tokens({"token": [{"name": "x", "roles": ["reactor"],
                                                           "sha256": token_hash(new_token())}]}).popitem()[1])
    assert limited.name == "c" and limited.roles == frozenset() and limited.namespaces == identity.namespaces


# ---------------------------------------------------------------- 1. no way up through a reaction
def test_a_reaction_runs_with_the_roles_of_whoever_signalled(tmp_path):
    async def go():
        async with tenants(tmp_path) as (node, c):
            before = node.scheduler.aging_ms("df")
            step = {"group": "mc", "element": "tune"}
            # root's own topic: bob's signal of the same name does not reach it
            sub = await c["root"].call("ed:react", {"topic": "jobs", "step": step})
            assert sub["status"] == "success", sub
            bob = await c["bob"].call("ed:signal", {"topic": "jobs", "data": {"lane": "df", "aging_ms": 4242}})
            assert bob["data"] == {"delivered": 0}
            # in a namespace both hold (ops), bob's signal reaches ops's reaction, which then
            # runs with bob's roles: no admin, so mc:tune is refused
            sub = await c["ops"].call("ed:react", {"topic": "ops/jobs", "step": step})
            assert sub["status"] == "success", sub
            bob = await c["bob"].call("ed:signal", {"topic": "ops/jobs", "data": {"lane": "df", "aging_ms": 4242}})
            assert bob["data"] == {"delivered": 1}
            for _ in range(200):
                subscription = node.elements.events.subscriptions[sub["data"]["subscription"]]
                if subscription.failed:
                    break
                await asyncio.sleep(0.01)
            assert subscription.failed == 1 and "PF403" in subscription.last_error, subscription.last_error
            assert node.scheduler.aging_ms("df") == before
            # the subscriber's own signal runs it with its own (admin) roles
            own = await c["ops"].call("ed:signal", {"topic": "ops/jobs", "data": {"lane": "df", "aging_ms": 4242}})
            assert own["data"] == {"delivered": 1}
            for _ in range(200):
                if node.scheduler.aging_ms("df") == 4242:
                    break
                await asyncio.sleep(0.01)
            assert node.scheduler.aging_ms("df") == 4242
    run(go())


# ---------------------------------------------------------------- 2. names are the principal's
def test_topics_are_the_principals_and_a_namespace_is_its_holders(tmp_path):
    async def go():
        async with tenants(tmp_path) as (node, c):
            watch = c["bob"].send("ed:watch", {"topic": "news"}, timeout_ms=600)
            shared = c["dave"].send("ed:watch", {"topic": "team-a/news"}, timeout_ms=3000)
            await asyncio.sleep(0.05)
            assert (await c["alice"].call("ed:signal", {"topic": "news", "data": "alice-secret"}))["data"] == \
                {"delivered": 0}
            assert (await c["alice"].call("ed:signal", {"topic": "team-a/news", "data": "x"}))["data"] == \
                {"delivered": 0}  # alice does not hold team-a: that name is her own
            assert (await c["carol"].call("ed:signal", {"topic": "team-a/news", "data": "for-team"}))["data"] == \
                {"delivered": 1}
            assert (await c["bob"].link.reply(watch))["payload"]["data"] == {"events": [], "complete": False}
            got = (await c["dave"].link.reply(shared))["payload"]["data"]
            assert got == {"events": ["for-team"], "complete": True}
    run(go())


def test_a_barrier_is_its_principals(tmp_path):
    async def go():
        async with tenants(tmp_path) as (node, c):
            alice = c["alice"].send("co:sync", {"barrier": "b", "parties": 2, "data": "alice-secret"}, timeout_ms=800)
            await asyncio.sleep(0.05)
            bob = c["bob"].send("co:sync", {"barrier": "b", "parties": 2, "data": "forged"}, timeout_ms=800)
            for client, seq in ((c["alice"], alice), (c["bob"], bob)):
                payload = (await client.link.reply(seq))["payload"]
                assert payload["error"]["code"] == "PF408", payload  # neither joined the other's barrier
            team = [c[n].send("co:sync", {"barrier": "team-a/b", "parties": 2, "data": n}, timeout_ms=3000)
                    for n in ("carol", "dave")]
            for name, seq in zip(("carol", "dave"), team):
                assert (await c[name].link.reply(seq))["payload"]["data"] == ["carol", "dave"]
    run(go())


def test_a_lock_name_is_its_principals_for_rm_lock_and_metadata_lock(tmp_path):
    async def go():
        async with tenants(tmp_path) as (node, c):
            held = await c["bob"].call("rm:lock", {"name": "ledger", "lease_ms": 60_000})
            assert held["status"] == "success", held
            mine = await c["alice"].call("df:noop", 1, timeout_ms=2000, metadata={"lock": "ledger"})
            assert mine["status"] == "success", mine  # bob's "ledger" is not alice's
            again = await c["alice"].call("rm:lock", {"name": "ledger", "lease_ms": 1000, "wait_ms": 0})
            assert again["status"] == "success", again
            theirs = await c["bob"].call("rm:lock", {"name": "ledger", "lease_ms": 1000, "wait_ms": 0})
            assert theirs["error"]["code"] == "PF009"  # his own is still his, and held
    run(go())


def test_a_buffer_name_is_its_principals_in_the_front_and_in_the_workers(tmp_path):
    async def go():
        async with tenants(tmp_path) as (node, c):
            made = await c["root"].call("rm:alloc", {"name": "grid", "shape": [4], "dtype": "<f8"})
            assert made["status"] == "success", made
            freed = await c["bob"].call("rm:free", {"name": "grid"})
            assert freed["error"]["code"] == "PF002" and "no buffer" in freed["error"]["message"]
            filled = await c["root"].call("df:buf_fill", {"name": "grid", "value": 2.5})
            assert filled["status"] == "success", filled
            assert (await c["root"].call("df:buf_sum", "grid"))["data"]["sum"] == 10.0
            other = await c["bob"].call("df:buf_sum", "grid")  # bob's handler run: bob's names
            assert other["status"] == "error" and "grid" in other["error"]["message"], other
    run(go())


def test_cache_keys_are_the_principals_or_their_namespaces(tmp_path):
    async def go():
        async with tenants(tmp_path) as (node, c):
            put = {"op": "put", "key": "k", "value": 1}
            assert (await c["alice"].call("rm:cache", put))["status"] == "success"
            assert (await c["bob"].call("rm:cache", {"op": "get", "key": "k"}))["data"]["hit"] is False
            put = {"op": "put", "key": "team-a/k", "value": 2}
            assert (await c["carol"].call("rm:cache", put))["status"] == "success"
            got = await c["dave"].call("rm:cache", {"op": "get", "key": "team-a/k"})
            assert got["data"] == {"key": "team-a/k", "hit": True, "value": 2, "expires_in_ms": got["data"]["expires_in_ms"]}
            assert (await c["alice"].call("rm:cache", {"op": "get", "key": "team-a/k"}))["data"]["hit"] is False
    run(go())


# ---------------------------------------------------------------- 3. co:sync's output is bounded
def test_a_barrier_that_would_deliver_past_its_bound_is_refused_up_front(tmp_path):
    async def go():
        # max_frame_bytes 64 KiB: one party's answer at most 32 KiB, all answers 256 KiB
        async with tenants(tmp_path, max_frame_bytes=65536) as (node, c):
            alone = await c["alice"].call("co:sync", {"barrier": "big", "parties": 2, "data": "x" * 40_000})
            assert alone["error"]["code"] == "PF002" and alone["error"]["message"].startswith("data:"), alone
            # 32 parties of 500 bytes: the 17th arrival would make each answer 8 550 bytes, and
            # 32 of them pass the 256 KiB the barrier may deliver
            seqs = [c["alice"].send("co:sync", {"barrier": "many", "parties": 32, "data": "y" * 498},
                                    timeout_ms=5000) for _ in range(20)]
            refused = []
            for seq in seqs[16:]:
                reply = (await c["alice"].link.reply(seq, timeout_s=2.0))["payload"]
                refused.append(reply["error"]["code"])
            assert refused == ["PF004"] * 4, refused  # at once, well before the others' deadline
            assert not [f for f in c["alice"].link.frames if f["seq"] in seqs[:16]]  # nothing delivered
    run(go())


# ---------------------------------------------------------------- 4. results within the frame limit
def test_a_result_over_the_frame_limit_is_an_error_and_the_link_stays_open(tmp_path):
    async def go():
        async with tenants(tmp_path, max_frame_bytes=65536) as (node, c):
            produce = await c["alice"].call("df:produce", {"range": [0, 100_000]})
            assert produce["error"]["code"] == "PF002" and produce["error"]["message"].startswith("range"), produce
            big = await c["alice"].call("df:blob", 100_000)  # a user's handler: 100 kB of JSON
            assert big["error"]["code"] == "PF413", big
            small = await c["alice"].call("df:blob", 10)
            assert small["status"] == "success" and small["data"] == "x" * 10
            gathered = await c["alice"].call("co:gather", {"steps": [{"group": "df", "element": "blob",
                                                                      "data": 30_000}] * 3})
            assert gathered["error"]["code"] == "PF413", gathered  # a node element's result too
            assert not c["alice"].link.closed
    run(go())


# ---------------------------------------------------------------- every element that runs steps: the submitter's roles
ADMIN_STEP = {"group": "mc", "element": "status"}
COMPOSITES = {
    "cf:seq": {"input": 1, "steps": [ADMIN_STEP]},
    "cf:branch": {"input": 1, "test": ADMIN_STEP, "then": {"group": "df", "element": "noop"}},
    "cf:loop": {"input": 1, "body": ADMIN_STEP, "times": 1},
    "co:gather": {"steps": [ADMIN_STEP]},
    "co:vote": {"step": ADMIN_STEP, "replicas": 1},
    "co:broadcast": {"step": {"group": "mc", "element": "pid"}, "targets": "workers"},
    "df:consume": {"items": [1], "step": ADMIN_STEP},
    "ed:timer": {"after_ms": 0, "step": ADMIN_STEP},
}


def test_every_element_that_runs_steps_runs_them_with_its_submitters_roles(tmp_path):
    """A submit-only principal cannot reach an admin element through any composite; an
    admin's same composite can (so the refusal is about roles, not the request)."""
    async def go():
        async with tenants(tmp_path) as (node, c):
            for key, data in COMPOSITES.items():
                bob = await c["bob"].call(key, data)
                root = await c["root"].call(key, data)
                if key == "co:broadcast":  # one entry per worker, each refused for bob
                    assert [e["error"]["code"] for e in bob["data"]] == ["PF403"], bob
                    assert [e["ok"] for e in root["data"]] == [True], root
                    continue
                assert bob["status"] == "error" and "PF403" in bob["error"]["message"], (key, bob)
                assert root["status"] == "success", (key, root)
    run(go())
