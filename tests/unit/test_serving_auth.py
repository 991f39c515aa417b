"""API key files (hashed, rotated by rewriting the file) and token buckets."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

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

    path.write_text("garbage\n")  # a broken rotation fails closed: the file's keys are gone, not kept
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 10))
    assert store.verify("new-key") is None and store.verify("env-key") == "ci"


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
