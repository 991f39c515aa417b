"""Attacks on the serving edge (issue 13: findings 3-6), each reproduced against a real server on 127.0.0.1 and
shown to fail now. The server is ``python -m ganops.serving`` in a process of its own (the image's entry point,
with the uvicorn configuration it really runs with), so its memory is measured alone; two attacks that need a
second configuration run ``uvicorn_config`` in a thread. Clients bind distinct loopback addresses (127.0.0.x) so
that the per-address limits of one attack do not touch another.

`make test` runs them at fast sizes (smaller uploads, 2-3 s read timeouts); `make resilience` at full sizes (the
issue's 4096 x 4095 PNG, shapes at the pixel cap, the default timeouts and connection limit), where they form the
report's "Attacks" section (``figures["attack"]``).
"""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
from PIL import Image

from ganops.serving.server import uvicorn_config
from ganops.serving.settings import ServerSettings, ServingSettings
from tests.resilience.faults import FaultPlan, FaultProxy
from tests.resilience.report import FULL, sized

pytest.register_assert_rewrite("tests.support.serving")
from tests.support.serving import (  # noqa: E402
    PeakRss,
    ServerThread,
    ServingCheckpoints,
    ServingProcess,
    api_keys_file,
    free_port,
    metric_value,
    metrics_text,
    wait_ready,
    wait_until,
)

if TYPE_CHECKING:
    from tests.support.moto_server import MotoS3Server

pytest_plugins = ["tests.support.serving"]

KEYS = {name: f"{name}-key-{i:04d}-0123456789abcdef" for i, name in enumerate(
    ("alice", "verifier", "verifier2", "verifier3", "bomber", "dave", "erin"))}
WATERMARK_KEY = "hex:" + "5a" * 32
MB = 1024 * 1024
HEADER_TIMEOUT = 10.0 if FULL else 2.0
BODY_TIMEOUT = 30.0 if FULL else 3.0
LIMIT_CONCURRENCY = 256 if FULL else 32
SLACK = 2.0  # seconds a refusal may take beyond its timeout on two busy shared cores


def key(name: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[name]}


def client_from(address: str, **kwargs: Any) -> httpx.Client:
    """An HTTP client whose connections come from ``address`` (any 127.x.y.z is this machine)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=120, **kwargs)


def connect(port: int, address: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(address, 0))


def read_answer(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection (or ``timeout``), and when the close came."""
    started = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data, time.monotonic() - started


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def gradient(height: int, width: int) -> np.ndarray:
    """An RGB picture that PNG compresses to a few KB (an upload costs the attacker nothing)."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = (np.arange(width) % 256).astype(np.uint8)[None, :]
    image[..., 1] = (np.arange(height) % 256).astype(np.uint8)[:, None]
    image[..., 2] = 77
    return image


@pytest.fixture(scope="module")
def edge(serving_checkpoints: ServingCheckpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingProcess]:
    """The serving process with API keys, a local audit log and (fast sizes) short read timeouts."""
    work = tmp_path_factory.mktemp("edge")
    env = {
        "GANOPS_SERVING_CHECKPOINT_URI": serving_checkpoints.digits[2],
        "GANOPS_SERVING_API_KEYS_FILE": str(api_keys_file(work / "keys", KEYS)),
        "GANOPS_SERVING_SAFETY__AUDIT_URI": (work / "audit").as_uri(),
        "GANOPS_SERVING_SAFETY__WATERMARK_KEY": WATERMARK_KEY,
    }
    if not FULL:
        env |= {"GANOPS_SERVING_SERVER__HEADER_TIMEOUT_S": str(HEADER_TIMEOUT),
                "GANOPS_SERVING_SERVER__BODY_TIMEOUT_S": str(BODY_TIMEOUT),
                "GANOPS_SERVING_SERVER__LIMIT_CONCURRENCY": str(LIMIT_CONCURRENCY)}
    server = ServingProcess(env, work / "serve.log").start()
    try:
        yield server
    finally:
        server.stop()


def _verify(client: httpx.Client, url: str, body: bytes, media: str, who: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = client.post(url + "/v1/watermark/verify", content=body, headers={**key(who), "Content-Type": media})
    return answer, time.monotonic() - started


# ------------------------------------------------------------------------------------------ finding 3: verify


def test_verify_of_a_4096x4095_png_answers_at_once_without_decoding_it(
    edge: ServingProcess, figures: dict[str, Any]
) -> None:
    figures["attack"] = "POST /v1/watermark/verify with a 4096 x 4095 PNG (~16 KB upload, 35 s CPU and +1.15 GB before)"
    upload = png(np.zeros((4095, 4096), dtype=np.uint8))
    with client_from("127.0.0.1") as client, PeakRss(edge.pid) as rss:
        answer, seconds = _verify(client, edge.url, upload, "image/png", "verifier")
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["field"] == "image" and "4095 x 4096" in answer.json()["error"]["message"]
    figures.update(upload_bytes=len(upload), status=answer.status_code, seconds=round(seconds, 2),
                   rss_growth_mb=round(rss.growth / MB, 1))
    assert seconds < 5.0 and rss.growth < 50 * MB, (seconds, rss.growth / MB)


def test_verify_of_three_new_shapes_in_a_row_is_bounded_in_time_and_memory(
    edge: ServingProcess, figures: dict[str, Any]
) -> None:
    side = sized(640, 2080)  # full: the pixel cap (room for the largest grid the server makes, 2066 px a side)
    shapes = [(side, side), (side - 1, side), (side, side - 1)]
    figures["attack"] = f"verify {len(shapes)} new image shapes in a row ({side} px; +1.15 GB per new shape before)"
    timeout = ServingSettings().limits.verify_timeout_s
    answers = []
    with client_from("127.0.0.1") as client, PeakRss(edge.pid) as rss:
        for who, shape in zip(("verifier", "verifier2", "verifier3"), shapes, strict=True):
            answer, seconds = _verify(client, edge.url, png(gradient(*shape)), "image/png", who)
            answers.append((answer.status_code, round(seconds, 2)))
            # 200, or 504 when two busy cores cannot finish within verify_timeout_s: an answer either way
            assert answer.status_code in (200, 504), answer.text
            assert seconds < timeout + SLACK, seconds
            if answer.status_code == 200:
                assert answer.json()["present"] is False
    figures.update(answers=answers, rss_growth_mb=round(rss.growth / MB, 1))
    assert rss.growth < 200 * MB, rss.growth / MB
    # Nothing stays behind: the same three shapes again cost no more memory than the first time.
    wait_until(lambda: _idle(edge), timeout=60)  # a timed-out verification has finished in its thread
    after = edge.rss_bytes()
    figures["rss_after_mb"] = round((after - rss.start) / MB, 1)
    assert after - rss.start < 200 * MB


def _idle(edge: ServingProcess) -> bool:
    """True once a tiny verification answers 200 (the verify slot is free again)."""
    tiny = png(np.zeros((8, 8), dtype=np.uint8))
    with client_from("127.0.0.1") as client:
        return client.post(edge.url + "/v1/watermark/verify", content=tiny,
                           headers={**key("verifier"), "Content-Type": "image/png"}).status_code == 200


def test_a_verification_flood_is_bounded_and_the_event_loop_stays_free(
    edge: ServingProcess, figures: dict[str, Any]
) -> None:
    limits = ServingSettings().limits
    flood = limits.verify_concurrency + limits.verify_queue + 6
    side = sized(1024, 2048)
    figures["attack"] = (f"{flood} verifications of {side} px images at once (decoded on the event loop, unbounded "
                         "before)")
    upload = png(gradient(side, side))
    answers: list[int] = []
    probes: list[float] = []
    done = threading.Event()

    def verify(i: int) -> None:
        with client_from(f"127.0.1.{i + 1}") as client:  # an address (and a bucket) each: only the gate limits
            who = ("verifier", "verifier2", "verifier3")[i % 3]
            answers.append(_verify(client, edge.url, upload, "image/png", who)[0].status_code)

    def probe() -> None:
        with client_from("127.0.0.1") as client:
            while not done.is_set():
                started = time.monotonic()
                client.get(edge.url + "/healthz")
                probes.append(time.monotonic() - started)
                time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    with PeakRss(edge.pid) as rss:
        threads = [threading.Thread(target=verify, args=(i,)) for i in range(flood)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
    done.set()
    prober.join(30)
    codes = Counter(answers)
    figures.update(answers=dict(codes), slowest_healthz_s=round(max(probes), 2), probes=len(probes),
                   rss_growth_mb=round(rss.growth / MB, 1))
    assert len(answers) == flood and set(codes) <= {200, 429, 503, 504}, codes
    assert codes[503] >= flood - limits.verify_concurrency - limits.verify_queue, codes  # the queue is bounded
    assert max(probes) < 1.0, max(probes)  # decoding and verifying never ran on the event loop
    assert rss.growth < 200 * MB, rss.growth / MB
    wait_until(lambda: _idle(edge), timeout=120)


def npy_header(shape: tuple[int, ...], dtype: str = "|u1") -> bytes:
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (64 - (10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def test_an_npy_header_bomb_gets_a_4xx(edge: ServingProcess, figures: dict[str, Any]) -> None:
    bomb = npy_header((200000, 200000, 3))
    figures["attack"] = f"a {len(bomb)}-byte .npy header claiming 200000 x 200000 x 3 (numpy tried 112 GiB: 500)"
    short = npy_header((1000, 1000, 3)) + bytes(10)  # within the pixel cap, 10 of its 3,000,000 bytes sent
    with client_from("127.0.0.1") as client, PeakRss(edge.pid) as rss:
        big, _ = _verify(client, edge.url, bomb, "application/x-npy", "bomber")
        lying, _ = _verify(client, edge.url, short, "application/x-npy", "bomber")
        as_json = client.post(edge.url + "/v1/watermark/verify", headers=key("bomber"),
                              json={"image": base64.b64encode(bomb).decode()})
    assert big.status_code == 413 and big.json()["error"]["field"] == "image", big.text
    assert lying.status_code == 400 and "promises 3000000 bytes" in lying.json()["error"]["message"], lying.text
    assert as_json.status_code == 413
    figures.update(header_bytes=len(bomb), status=big.status_code, rss_growth_mb=round(rss.growth / MB, 1))
    assert rss.growth < 50 * MB


# --------------------------------------------------------------------------------- finding 4: connections


def test_a_64_mib_header_is_refused(edge: ServingProcess, figures: dict[str, Any]) -> None:
    figures["attack"] = "a request with a 64 MiB header (read whole and answered 200 before, +230 MB each)"
    sock = connect(edge.port, "127.0.0.5")
    sent = 0

    def flood() -> None:
        nonlocal sent
        chunk = b"a" * MB
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: ganops\r\nX-Big: ")
            for _ in range(64):
                sock.sendall(chunk)
                sent += len(chunk)
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass  # the server closed the connection: the point

    with PeakRss(edge.pid) as rss:
        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        answer, seconds = read_answer(sock, timeout=30)
        sender.join(30)
    sock.close()
    status = answer.split(b"\r\n", 1)[0]
    figures.update(status=status.decode(errors="replace"), seconds=round(seconds, 2), mb_sent_before_close=sent // MB,
                   rss_growth_mb=round(rss.growth / MB, 1))
    assert status == b"HTTP/1.1 431 Request Header Fields Too Large", answer[:200]
    assert sent < 64 * MB and rss.growth < 50 * MB, (sent, rss.growth)
    assert httpx.get(edge.url + "/healthz").status_code == 200  # and the server is fine


def test_slow_clients_are_cut_off_within_the_read_timeouts(edge: ServingProcess, figures: dict[str, Any]) -> None:
    figures["attack"] = "slow clients: an idle connection, a head sent a byte at a time, a body that never ends"
    results: dict[str, tuple[bytes, float]] = {}

    def idle() -> None:
        results["idle"] = read_answer(connect(edge.port, "127.0.0.6"), timeout=HEADER_TIMEOUT + 30)

    def trickle_head() -> None:
        sock = connect(edge.port, "127.0.0.6")
        started = time.monotonic()
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: ganops\r\n")
        sock.settimeout(0.5)
        data = b""
        try:
            while time.monotonic() - started < HEADER_TIMEOUT + 30:
                sock.sendall(b"X")  # a header name that never ends
                try:
                    chunk = sock.recv(4096)
                except TimeoutError:
                    continue
                data += chunk
                if not chunk:
                    break
        except OSError:
            pass
        results["head"] = (data, time.monotonic() - started)

    def trickle_body() -> None:
        sock = connect(edge.port, "127.0.0.6")
        started = time.monotonic()
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: ganops\r\nContent-Type: application/json\r\n"
                     b"X-API-Key: " + KEYS["alice"].encode() + b"\r\nContent-Length: 1000\r\n\r\n{")
        sock.settimeout(0.5)
        data = b""
        try:
            while time.monotonic() - started < BODY_TIMEOUT + 30:
                sock.sendall(b" ")
                try:
                    chunk = sock.recv(4096)
                except TimeoutError:
                    continue
                data += chunk
                if not chunk:
                    break
        except OSError:
            pass
        results["body"] = (data, time.monotonic() - started)

    threads = [threading.Thread(target=f) for f in (idle, trickle_head, trickle_body)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BODY_TIMEOUT + 60)
    figures.update({f"{name}_cut_after_s": round(seconds, 1) for name, (_, seconds) in results.items()})
    for name, limit in (("idle", HEADER_TIMEOUT), ("head", HEADER_TIMEOUT), ("body", BODY_TIMEOUT)):
        data, seconds = results[name]
        assert data.startswith(b"HTTP/1.1 408 Request Timeout"), (name, data[:100])
        assert limit - 0.5 <= seconds < limit + SLACK, (name, seconds)
    text = metrics_text(edge.url)
    assert metric_value(text, "ganops_serving_rejected_total", {"reason": "header_timeout"}) >= 2
    assert metric_value(text, "ganops_serving_rejected_total", {"reason": "body_timeout"}) >= 1


def test_a_connection_flood_gets_503_beyond_limit_concurrency(edge: ServingProcess, figures: dict[str, Any]) -> None:
    figures["attack"] = f"{LIMIT_CONCURRENCY} idle connections held open, then one more request (no limit before)"
    flood = [connect(edge.port, "127.0.0.9") for _ in range(LIMIT_CONCURRENCY)]
    try:
        time.sleep(0.3)  # every connection accepted
        with client_from("127.0.0.1") as client:
            refused = client.get(edge.url + "/healthz")
    finally:
        for sock in flood:
            sock.close()
    figures["status_beyond_limit"] = refused.status_code
    assert refused.status_code == 503, refused.text
    wait_until(lambda: httpx.get(edge.url + "/healthz").status_code == 200, timeout=30)


# -------------------------------------------------------------------------------------- finding 5: limits


def test_rotating_x_forwarded_for_does_not_escape_the_auth_failure_limit(
    edge: ServingProcess, figures: dict[str, Any]
) -> None:
    figures["attack"] = "key guessing with a new X-Forwarded-For each time (failed authentications were unlimited)"
    burst = ServingSettings().limits.auth_failure_burst
    codes: Counter[int] = Counter()
    with client_from("127.0.0.7") as client:
        for i in range(burst + 15):
            answer = client.get(edge.url + "/v1/models",
                                headers={"X-API-Key": f"guess-{i}", "X-Forwarded-For": f"203.0.113.{i}"})
            codes[answer.status_code] += 1
        locked = client.get(edge.url + "/v1/models", headers=key("alice"))
    with client_from("127.0.0.1") as client:
        elsewhere = client.get(edge.url + "/v1/models", headers=key("alice"))
    figures.update(guesses=sum(codes.values()), answered_401=codes[401], answered_429=codes[429])
    assert codes == Counter({401: burst, 429: 15}), codes
    assert locked.status_code == 429 and "failed authentications" in locked.json()["error"]["message"]
    assert elsewhere.status_code == 200  # another address is not locked out


def test_a_request_costs_its_samples(edge: ServingProcess, figures: dict[str, Any]) -> None:
    figures["attack"] = "requests of 64 samples each (one token per request whatever its n before)"
    limits = ServingSettings().limits
    per_request = 64
    allowed = limits.rate_limit_burst // per_request
    with client_from("127.0.0.1") as client:
        started = time.monotonic()
        codes = [client.post(edge.url + "/v1/generate", json={"n": per_request}, headers=key("dave")).status_code
                 for _ in range(allowed + 3)]
        elapsed = time.monotonic() - started
    refill = int(elapsed * limits.rate_limit_per_second / per_request)
    figures.update(requests=len(codes), allowed=codes.count(200), refused=codes.count(429))
    assert codes[:allowed] == [200] * allowed
    assert codes.count(200) <= allowed + refill and codes.count(429) >= len(codes) - allowed - refill, codes


def test_the_body_is_not_read_before_authentication(edge: ServingProcess, figures: dict[str, Any]) -> None:
    figures["attack"] = "an unauthenticated request announcing a body it never sends (parsed before auth before)"
    sock = connect(edge.port, "127.0.0.8")
    sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: ganops\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000000\r\n\r\n")
    answer, seconds = read_answer(sock, timeout=HEADER_TIMEOUT + BODY_TIMEOUT)
    sock.close()
    with client_from("127.0.0.8") as client:
        garbage = client.post(edge.url + "/v1/generate", content=b'{"n": ',
                              headers={"Content-Type": "application/json"})
    figures.update(status=answer.split(b"\r\n", 1)[0].decode(errors="replace"), seconds=round(seconds, 2))
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert seconds < 1.5, seconds  # answered from the headers: nothing waited for the body
    assert garbage.status_code == 401  # not 400: the malformed body was never parsed


def test_rotating_x_forwarded_for_from_an_untrusted_peer_does_not_bypass_the_rate_limit(
    serving_checkpoints: ServingCheckpoints, tmp_path: Path, figures: dict[str, Any]
) -> None:
    """Authentication off, so the limit is per client address; 127.0.0.2 is the one trusted proxy."""
    figures["attack"] = ("rotating X-Forwarded-For with authentication off (uvicorn trusted it from 127.0.0.1: "
                         "every request was a new client)")
    settings = ServingSettings(checkpoint_uri=serving_checkpoints.digits[2], safety={"audit_uri": None},
                               server=ServerSettings(trusted_proxies=["127.0.0.2"]))
    limits = settings.limits
    n = 64
    tries = 10
    with ServerThread.of(uvicorn_config(settings, port=free_port(), log_level="warning")) as server:
        wait_ready(server.url)

        def burst(address: str) -> tuple[list[int], float]:
            with client_from(address) as client:
                started = time.monotonic()
                codes = [client.post(server.url + "/v1/generate", json={"n": n},
                                     headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code
                         for i in range(tries)]
                return codes, time.monotonic() - started

        untrusted, elapsed = burst("127.0.0.1")
        trusted, _ = burst("127.0.0.2")
    allowed = limits.rate_limit_burst // n + int(elapsed * limits.rate_limit_per_second / n) + 1
    figures.update(requests=tries, allowed_untrusted=untrusted.count(200), allowed_via_trusted_proxy=trusted.count(200))
    assert untrusted.count(200) <= allowed and untrusted.count(429) >= tries - allowed, untrusted
    assert trusted == [200] * tries  # from the configured proxy, each forwarded address is its own client


# ------------------------------------------------------------------------------------------ finding 6: audit


def _audit_lines(folder: Path) -> list[tuple[Path, int, dict[str, Any]]]:
    return [(path, number, json.loads(line)) for path in sorted(folder.rglob("*.jsonl"))
            for number, line in enumerate(path.read_text().splitlines(), start=1)]


def _audit_verify(location: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ganops.cli", "audit", "verify", str(location)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_a_tampered_audit_record_is_detected(edge: ServingProcess, figures: dict[str, Any]) -> None:
    figures["attack"] = ("64-sample requests at a tiny truncation: 63 blocked samples each (63 synchronous "
                         "read-modify-write records per request before), then one audit record edited")
    folder = Path(edge.env["GANOPS_SERVING_SAFETY__AUDIT_URI"].removeprefix("file://"))
    before = len(_audit_lines(folder)) if folder.exists() else 0
    requests = 3
    blocked = []
    with client_from("127.0.0.1") as client:
        for seed in range(requests):
            answer = client.post(edge.url + "/v1/generate", headers=key("erin"),
                                 json={"n": 64, "seed": seed, "truncation": 1e-6})
            assert answer.status_code == 200, answer.text
            blocked.append(answer.json()["blocked"])
            assert blocked[-1] >= 63  # near-duplicates of the first sample (which may be blocked too)
            time.sleep(1.0)  # refill erin's bucket
    wait_until(lambda: len(_audit_lines(folder)) >= before + requests, timeout=30)
    records = _audit_lines(folder)
    assert len(records) == before + requests  # one record per request, not one per blocked sample
    path, number, record = records[-2]
    assert record["blocked"] == blocked[1] == len(record["blocked_samples"]) and record["api_key_id"] == "erin"
    assert record["samples"] == 64 and sum(record["verdicts"]["degenerate"].values()) == 64
    intact = _audit_verify(folder)
    assert intact.returncode == 0 and f"intact: {len(records)} record(s)" in intact.stdout, intact

    lines = path.read_text().splitlines()
    original = path.read_text()
    edited = json.loads(lines[number - 1])
    edited["blocked"] = 0  # hide what was blocked
    lines[number - 1] = json.dumps(edited, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    try:
        tampered = _audit_verify(folder)
    finally:
        path.write_text(original)
    figures.update(requests=requests, records=requests, blocked_per_request=blocked,
                   detected=f"exit {tampered.returncode}: {(tampered.stderr.splitlines() or [''])[0]}")
    assert tampered.returncode == 4, tampered
    assert f"{path.as_uri()}:{number}: chain {record['chain']} seq {record['seq']}: its content does not match" in (
        tampered.stderr), tampered.stderr

    del lines[number - 1]  # or remove the record altogether
    path.write_text("\n".join(json.dumps(json.loads(x), sort_keys=True, separators=(",", ":")) for x in lines) + "\n")
    try:
        removed = _audit_verify(folder)
    finally:
        path.write_text(original)
    assert removed.returncode == 4 and "are missing" in removed.stderr, removed.stderr
    assert _audit_verify(folder).returncode == 0


def test_a_failing_audit_store_does_not_stall_generation(
    moto_s3: MotoS3Server, serving_checkpoints: ServingCheckpoints, monkeypatch: pytest.MonkeyPatch,
    figures: dict[str, Any],
) -> None:
    figures["attack"] = "blocked samples while the audit bucket fails every write (generation waited on it before)"
    bucket = moto_s3.create_bucket("audit")
    with FaultProxy(moto_s3.endpoint_url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        proxy.set_faults(FaultPlan(rate=1.0, methods=("PUT",), kinds=("503",)))
        settings = ServingSettings(checkpoint_uri=serving_checkpoints.digits[2], limits={"rate_limit_per_second": 0},
                                   safety={"audit_uri": f"s3://{bucket}/audit"})
        with ServerThread.of(uvicorn_config(settings, port=free_port(), log_level="warning")) as server:
            wait_ready(server.url)
            seconds = []
            for seed in range(sized(4, 10)):
                started = time.monotonic()
                answer = httpx.post(server.url + "/v1/generate", json={"n": 64, "seed": seed, "truncation": 1e-6},
                                    timeout=60)
                seconds.append(time.monotonic() - started)
                assert answer.status_code == 200 and answer.json()["blocked"] >= 63
            wait_until(lambda: metric_value(metrics_text(server.url), "ganops_audit_failures_total",
                                            {"reason": "write_error"}) >= 1, timeout=60)
            proxy.set_faults(FaultPlan())  # the store recovers: the segments that waited are written, in order
            wait_until(lambda: metric_value(metrics_text(server.url), "ganops_audit_records_total") >= len(seconds),
                       timeout=60)
            text = metrics_text(server.url)
    figures.update(requests=len(seconds), slowest_request_s=round(max(seconds), 2),
                   failed_writes=metric_value(text, "ganops_audit_failures_total", {"reason": "write_error"}),
                   records_lost=metric_value(text, "ganops_audit_failures_total", {"reason": "queue_full"}))
    assert max(seconds) < 5.0, seconds  # S3's retries (seconds each) never reached a request
    assert metric_value(text, "ganops_audit_failures_total", {"reason": "queue_full"}) == 0
    keys = [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys and all(k.startswith("audit/") and k.endswith(".jsonl") for k in keys)
    from ganops.serving.safety.audit import read_audit_lines, verify_records

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_s3.endpoint_url)
    report = verify_records(read_audit_lines(f"s3://{bucket}/audit/"))
    assert report.intact and report.records == len(seconds), report
