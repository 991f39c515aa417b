"""API key files (hashed, rotated by rewriting the file) and token buckets."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest

from ganops.serving import auth
from ganops.serving.auth import ApiKeyStore, Principal, TokenBuckets, hash_key, parse_key_lines


def line(key_id: str, key: str) -> str:
    return f"{key_id}:{hashlib.sha256(key.encode()).hexdigest()}"


def test_key_lines_are_parsed_and_problems_name_the_entry() -> None:
    text = f"# comment\n\n{line('a', 'k1')}\n  {line('b.c-d', 'k2')}  \n"
    assert parse_key_lines(text, "keys") == {hash_key("k1"): "a", hash_key("k2"): "b.c-d"}
    assert parse_key_lines(f"{line('a', 'k1')},{line('b', 'k2')}", "env") == {hash_key("k1"): "a",
                                                                              hash_key("k2"): "b"}
    with pytest.raises(ValueError, match="keys: entry 2 is not"):
        parse_key_lines(f"{line('a', 'k1')}\nb:not-a-hash\n", "keys")
    with pytest.raises(ValueError, match="repeats the hash"):
        parse_key_lines(f"{line('a', 'k1')}\n{line('b', 'k1')}\n", "keys")
    with pytest.raises(ValueError):
        parse_key_lines("k1\n", "keys")  # a raw key is refused: the file stores hashes only


def test_keys_verify_and_a_rewritten_file_is_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(line("alice", "old-key") + "\n")
    store = ApiKeyStore(file=path, inline=line("ci", "env-key"), reload_interval_s=0)
    assert store.enabled and len(store) == 2
    assert store.verify("old-key") == "alice" and store.verify("env-key") == "ci"
    assert store.verify("nope") is None and store.verify("") is None

    path.write_text(line("alice", "new-key") + "\n")  # the Secret was rotated
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 5))
    assert store.verify("new-key") == "alice" and store.verify("old-key") is None

    path.write_text("garbage\n")  # a broken rotation keeps the previous keys
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 10))
    assert store.verify("new-key") == "alice"


def test_no_key_source_means_authentication_is_off() -> None:
    assert not ApiKeyStore().enabled
    assert Principal(None, "10.0.0.1").bucket == "ip:10.0.0.1" and Principal("a").bucket == "key:a"


def test_token_buckets_allow_a_burst_then_the_rate() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3)
    assert [buckets.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", now=0.0) == pytest.approx(0.5)
    assert buckets.take("b", now=0.0) == 0.0  # per principal
    assert buckets.take("a", now=0.5) == 0.0  # one token back after 1/rate seconds
    assert buckets.take("a", now=0.5) > 0
    assert buckets.take("a", now=100.0) == 0.0  # never more than the burst
    assert [buckets.take("a", now=100.0) for _ in range(3)][-1] > 0
    assert TokenBuckets.retry_after(0.2) == 1 and TokenBuckets.retry_after(2.1) == 3
    assert TokenBuckets(rate=0, burst=1).take("a") == 0.0  # rate 0: no limit


def test_token_buckets_forget_the_least_recently_used() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_buckets=2)
    buckets.take("a", now=0.0)
    buckets.take("b", now=0.0)
    buckets.take("c", now=0.0)  # "a" is dropped: it comes back with a full bucket
    assert buckets.take("a", now=0.0) == 0.0
    assert buckets.take("c", now=0.0) > 0


# ------------------------------------------------------------------------ pinned by the mutation audit
class Clock:
    """The store's monotonic clock, moved by hand (the reload interval is checked against it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_rotated_file_is_reread_after_the_default_interval_and_not_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(auth.time, "monotonic", clock)
    path = tmp_path / "keys"
    path.write_text(line("alice", "old-key") + "\n")
    store = ApiKeyStore(file=path)  # as serving builds it: the default interval, 5 s
    path.write_text(line("alice", "new-key") + "\n")
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 5))
    clock.now = 1004.999
    assert store.verify("new-key") is None and store.verify("old-key") == "alice"
    clock.now = 1005.0
    assert store.verify("new-key") == "alice" and store.verify("old-key") is None


def test_inline_keys_alone_turn_authentication_on_and_verify() -> None:
    store = ApiKeyStore(inline=line("ci", "env-key"))
    assert store.enabled and len(store) == 1
    assert store.verify("env-key") == "ci" and store.verify("other") is None
    with pytest.raises(ValueError, match="GANOPS_SERVING_API_KEYS: entry 1 is not"):
        ApiKeyStore(inline="ci:short")


def test_an_empty_key_file_turns_authentication_on_for_nobody(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# no keys yet\n")
    store = ApiKeyStore(file=path)
    assert store.enabled and len(store) == 0 and store.verify("anything") is None


def test_principals_are_values() -> None:
    assert Principal("a") == Principal("a", "") and Principal(None).bucket == "ip:"
    with pytest.raises(dataclasses.FrozenInstanceError):
        Principal("a").key_id = "b"  # type: ignore[misc]


def test_the_wait_is_the_time_until_the_missing_tokens_are_back() -> None:
    buckets = TokenBuckets(rate=2.0, burst=1)
    assert buckets.take("a", now=0.0) == 0.0
    assert buckets.take("a", now=0.25) == pytest.approx(0.25)  # half a token back, half missing at 2/s
    assert buckets.take("a", cost=3.0, now=0.25) == pytest.approx(1.25)  # a large request waits for more


def test_rate_zero_never_limits() -> None:
    buckets = TokenBuckets(rate=0, burst=1)
    assert [buckets.take("a", now=0.0) for _ in range(5)] == [0.0] * 5


def test_ten_thousand_buckets_are_kept_by_default() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1)
    buckets.take("first", now=0.0)  # empty now
    for i in range(9_999):
        buckets.take(f"p{i}", now=0.0)
    assert buckets.take("first", now=0.0) > 0  # 10 000 buckets: still remembered
    buckets.take("p-extra", now=0.0)  # the 10 001st evicts the least recently used ("p0")
    assert buckets.take("p0", now=0.0) == 0.0 and buckets.take("first", now=0.0) > 0
