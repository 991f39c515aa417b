"""Rate limits at their defaults, request weights, client identities, the edge guard's order (issue 13, finding 5),
and key-file reloads that fail closed (finding 8)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from ganops.serving.app import create_app, open_paths
from ganops.serving.auth import ApiKeyStore, Principal, TokenBuckets, client_key, parse_key_entries
from ganops.serving.middleware import EdgeGuard, Refusal, presented_key
from ganops.serving.settings import LimitSettings, ServerSettings, ServingSettings


def line(key_id: str, key: str) -> str:
    return f"{key_id}:{hashlib.sha256(key.encode()).hexdigest()}"


# ------------------------------------------------------------------------------------- the default buckets


def test_200_requests_at_once_at_the_default_rate_and_burst_get_exactly_the_burst() -> None:
    limits = LimitSettings()
    assert (limits.rate_limit_per_second, limits.rate_limit_burst) == (64.0, 128)
    buckets = TokenBuckets(limits.rate_limit_per_second, limits.rate_limit_burst)
    waits = [buckets.take("key:a", now=100.0) for _ in range(200)]
    assert waits.count(0.0) == limits.rate_limit_burst and waits[: limits.rate_limit_burst] == [0.0] * 128
    # The k-th refused request is told when one token will be there: 1/rate, whatever k (refusals take nothing).
    assert waits[128:] == [pytest.approx(1 / 64)] * 72
    # One second later exactly `rate` more pass, then refusals again; a full second's wait is not a full bucket.
    later = [buckets.take("key:a", now=101.0) for _ in range(100)]
    assert later.count(0.0) == 64 and later[:64] == [0.0] * 64 and later[64] == pytest.approx(1 / 64)


def test_the_apps_buckets_are_the_default_ones() -> None:
    app = create_app(ServingSettings(checkpoint_uri="file:///nowhere", safety={"audit_uri": None}))
    buckets = app.state.services.buckets
    assert [buckets.take("ip:10.0.0.1", now=5.0) for _ in range(200)].count(0.0) == 128


def test_a_request_costs_what_it_asks_for_but_never_more_than_the_bucket() -> None:
    buckets = TokenBuckets(rate=64.0, burst=128)
    assert buckets.take("k", cost=64, now=0.0) == 0.0 and buckets.take("k", cost=64, now=0.0) == 0.0
    assert buckets.take("k", cost=64, now=0.0) == pytest.approx(1.0)  # 64 tokens at 64/s
    assert buckets.take("k", cost=1, now=0.5) == 0.0  # 32 tokens back
    assert buckets.take("k", cost=500, now=10.0) == 0.0  # charged as the whole (full) bucket
    assert buckets.take("k", cost=1, now=10.0) > 0
    assert buckets.wait("k", cost=1, now=10.0) == pytest.approx(1 / 64) and buckets.wait("new", now=0.0) == 0.0


def test_client_identities() -> None:
    assert client_key("10.1.2.3") == "10.1.2.3"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert client_key("unknown") == "unknown"
    assert Principal(None, "10.0.0.1").bucket == "ip:10.0.0.1" and Principal("a").bucket == "key:a"


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    assert ServerSettings(trusted_proxies=["10.0.0.0/8", " 10.1.2.3 ", "10.9.9.9/8"]).trusted_proxies == [
        "10.0.0.0/8", "10.1.2.3", "10.0.0.0/8"]
    for bad in ("*", "ingress", "10.0.0.0/33"):
        with pytest.raises(ValueError, match="not an IP address or CIDR"):
            ServerSettings(trusted_proxies=[bad])
    assert ServerSettings().trusted_proxies == []  # nobody's X-Forwarded-For by default


def test_require_memorization_index_needs_the_filter() -> None:
    with pytest.raises(ValueError, match="require_memorization_index needs memorization_enabled"):
        ServingSettings(safety={"require_memorization_index": True, "memorization_enabled": False})


# ------------------------------------------------------------------------------------------- the guard


def scope(path: str = "/v1/generate", client: str = "10.0.0.1", **headers: str) -> dict[str, Any]:
    return {"type": "http", "path": path, "client": (client, 1234),
            "headers": [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]}


def guard(tmp_path: Path, *, failures: int = 3, addresses: int = 1000) -> EdgeGuard:
    keys = tmp_path / "keys"
    keys.write_text(line("alice", "alice-key") + "\n")
    app = create_app(ServingSettings(checkpoint_uri="file:///nowhere", safety={"audit_uri": None}))
    return EdgeGuard(ApiKeyStore(file=keys), TokenBuckets(1.0, addresses), TokenBuckets(0.01, failures),
                     open_paths(app))


def test_the_open_paths_are_the_probes_metrics_and_schema() -> None:
    app = create_app(ServingSettings(checkpoint_uri="file:///nowhere", safety={"audit_uri": None}))
    assert open_paths(app) == {"/healthz", "/readyz", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready",
                               "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def test_the_guard_authenticates_from_headers_and_limits_failures_per_address(tmp_path: Path) -> None:
    edge = guard(tmp_path)
    assert edge.admit(scope(x_api_key="alice-key")) == Principal("alice", "10.0.0.1")
    assert edge.admit(scope(authorization="Bearer alice-key")) == Principal("alice", "10.0.0.1")
    assert edge.admit(scope(path="/healthz")) == Principal(None, "10.0.0.1")  # open
    assert isinstance(edge.admit(scope(path="/no/such/path")), Refusal)  # unknown paths are closed
    answers = [edge.admit(scope(x_api_key=f"guess-{i}")) for i in range(5)]
    assert [a.status for a in answers if isinstance(a, Refusal)] == [401, 401, 429, 429, 429]  # one 401 was above
    locked = edge.admit(scope(x_api_key="alice-key"))
    assert isinstance(locked, Refusal) and locked.status == 429 and locked.reason == "auth_failures"
    assert edge.admit(scope(client="10.0.0.2", x_api_key="alice-key")) == Principal("alice", "10.0.0.2")
    assert edge.admit(scope(path="/healthz")) == Principal(None, "10.0.0.1")  # probes stay open


def test_the_guard_limits_requests_per_address_before_authentication(tmp_path: Path) -> None:
    edge = guard(tmp_path, addresses=3)
    answers = [edge.admit(scope(path="/openapi.json")) for _ in range(4)]
    assert [isinstance(a, Refusal) for a in answers] == [False, False, False, True]
    refused = answers[-1]
    assert isinstance(refused, Refusal) and refused.reason == "address_rate_limited" and refused.status == 429
    assert not isinstance(edge.admit(scope(path="/metrics")), Refusal)  # probes and metrics are never limited


def test_presented_keys() -> None:
    assert presented_key([(b"x-api-key", b"k1"), (b"authorization", b"Bearer k2")]) == "k1"
    assert presented_key([(b"authorization", b"bearer  k2 ")]) == "k2"
    assert presented_key([(b"authorization", b"Basic YWxpY2U=")]) is None and presented_key([]) is None


# ------------------------------------------------------------------------------------------ the key file


def test_key_entries_that_cannot_be_parsed_are_refused_one_by_one() -> None:
    text = f"{line('a', 'k1')}\nnot-a-key\n{line('b', 'k2')}\n{line('c', 'k1')}\n"
    keys, problems = parse_key_entries(text, "keys")
    assert set(keys.values()) == {"a", "b"}
    assert problems == ["keys: entry 2 is not '<key-id>:<64 hex chars of sha256>'",
                        "keys: entry 4 repeats the hash of key 'a'"]
    assert "k1" not in " ".join(problems)


def test_a_reload_fails_closed_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{line('alice', 'old-alice')}\n{line('bob', 'bob-key')}\n")
    problems: list[tuple[str, int]] = []
    counts: list[int] = []
    store = ApiKeyStore(file=path, reload_interval_s=0, on_problems=lambda r, n: problems.append((r, n)),
                        on_keys=counts.append)
    assert store.verify("old-alice") == "alice" and counts == [2]

    def rotate(text: str) -> None:
        path.write_text(text)
        stat = path.stat()
        os.utime(path, (stat.st_atime, stat.st_mtime + 10))

    # The Secret revokes alice's key and adds carol's; one entry of the new file is garbled.
    rotate(f"{line('bob', 'bob-key')}\nal1ce:garbled\n{line('carol', 'carol-key')}\n")
    assert store.verify("old-alice") is None  # revoked, whatever else the file got wrong
    assert store.verify("bob-key") == "bob" and store.verify("carol-key") == "carol"
    assert problems == [("invalid_entry", 1)] and counts[-1] == 2

    path.unlink()  # unreadable: no key of the file is valid until it reads again
    assert store.verify("bob-key") is None and problems[-1] == ("unreadable", 1) and counts[-1] == 0
    path.write_text(f"{line('bob', 'bob-key')}\n")
    assert store.verify("bob-key") == "bob" and counts[-1] == 1


def test_an_empty_key_file_refuses_everyone(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# every key was revoked\n")
    store = ApiKeyStore(file=path)
    assert store.enabled and len(store) == 0 and store.verify("anything") is None
