"""Helpers for serving tests and benchmarks: a real uvicorn server in a thread, real checkpoints (trained, then
derived through the real checkpoint writer: constant weights, a generator that reproduces training digits), API
keys, a failing safety filter, a fake NSFW detector and a TCP proxy that can cut MLflow off and bring it back."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import uvicorn

from ganops import storage
from ganops.serving.safety import Detection, MemorizationIndex, RequestContext, Sample, Verdict
from ganops.trainer.checkpoint import CheckpointManager
from ganops.trainer.data import digits
from ganops.trainer.loop import RunContext, Trainer
from tests.support.jobs import as_job, digits_job, grid_job


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ------------------------------------------------------------------------------------------------ the server


@dataclass
class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 in a daemon thread (signals stay with the main thread).

    ``config``: a whole ``uvicorn.Config`` instead (``ganops.serving.server.uvicorn_config(settings, port=...)``:
    the connection limits and proxy handling the serving process really runs with)."""

    app: Any
    port: int = 0
    shutdown_timeout_s: int = 10
    config: uvicorn.Config | None = field(default=None, repr=False)
    server: uvicorn.Server | None = field(default=None, repr=False)
    thread: threading.Thread | None = field(default=None, repr=False)

    @classmethod
    def of(cls, config: uvicorn.Config) -> ServerThread:
        return cls(config.app, port=config.port, config=config)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.port = self.port or free_port()
        config = self.config or uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False, lifespan="on",
            timeout_graceful_shutdown=self.shutdown_timeout_s,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn exited during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self if self.server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class ServingProcess:
    """``python -m ganops.serving`` (the image's entry point: ``uvicorn_config`` and all) in a process of its own,
    configured through ``GANOPS_SERVING_*`` variables; its memory can be read (:meth:`rss_bytes`)."""

    env: dict[str, str]
    log: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 180.0) -> ServingProcess:
        self.port = self.port or free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "GANOPS_SERVING_LOG_LEVEL": "warning", **self.env,
               "GANOPS_SERVING_HOST": "127.0.0.1", "GANOPS_SERVING_PORT": str(self.port)}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "ganops.serving"], env=env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server was not ready in {timeout} s: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def rss_bytes(self) -> int:
        return proc_rss_bytes(self.pid)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> ServingProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def proc_rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class PeakRss:
    """The highest resident memory of process ``pid`` while the ``with`` block runs (sampled every 5 ms), and
    ``growth``: that peak minus the memory at the start."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.start = self.peak = proc_rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def growth(self) -> int:
        return self.peak - self.start

    def _sample(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.peak = max(self.peak, proc_rss_bytes(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(OSError, RuntimeError):
            self.peak = max(self.peak, proc_rss_bytes(self.pid))


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


def wait_ready(url: str, timeout: float = 30.0) -> None:
    def ready() -> bool:
        try:
            return httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout)


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total


def metrics_text(url: str) -> str:
    return httpx.get(url + "/metrics", timeout=5).text


# ------------------------------------------------------------------------------------------------ checkpoints

TRAINED_DIGITS: dict[str, Any] = {
    "model": {"ema": {"enabled": False}},
    "training": {"steps": 30},
    "optimizer": {"lrGenerator": 2e-3, "lrDiscriminator": 2e-3},
    "checkpoint": {"everySteps": 10, "keepLast": 3},
}


def train(job_obj: dict[str, Any], root: Path) -> list[str]:
    """Train ``job_obj`` (a tiny job) with the real Trainer; the step folders it left, oldest first."""
    job = as_job(job_obj)
    ctx = RunContext("ns", job.metadata.name, root.as_uri(), root / "work" / job.metadata.name, progress=False)
    result = Trainer(job, ctx).fit()
    assert result.status == "completed", result
    manager = CheckpointManager(ctx.checkpoint_root)
    return [storage.join(manager.root, f"step-{step:09d}") for step in sorted(manager.steps())]


def trained_digits(root: Path, name: str = "digits", **spec: Any) -> list[str]:
    """An unconditional 8 px digits DCGAN, 30 steps: checkpoints at steps 10, 20, 30 (20 and 30 pass the filters)."""
    return train(digits_job(name, **_merge(TRAINED_DIGITS, spec)), root)


def trained_grid(root: Path, name: str = "grid") -> list[str]:
    return train(grid_job(name), root)


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def derive_checkpoint(
    step_uri: str, dest_root: str, transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    *, model: dict[str, Any] | None = None,
) -> str:
    """A new checkpoint (through the real writer) whose generator weights are ``transform`` of ``step_uri``'s."""
    root, _, step_dir = step_uri.rstrip("/").rpartition("/")
    step = int(step_dir.removeprefix("step-"))
    loaded = CheckpointManager(root).load_step(step, weights_only=True)
    weights = dict(loaded.weights)
    weights["generator"] = transform(dict(weights["generator"]))
    weights["generator_ema"] = transform(dict(weights["generator_ema"]))
    info = {"model": model or loaded.manifest["model"]}
    CheckpointManager(dest_root).save(step, weights, {}, info=info)
    return storage.join(dest_root, step_dir)


def constant_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every generator weight set to one constant: the output ignores z (a degenerate model)."""
    return {k: (torch.full_like(v, 0.01) if v.is_floating_point() else v) for k, v in state.items()}


def digits_by_label() -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The training images (N, 1, 8, 8) in [-1, 1] and the first image of each class."""
    data = digits()
    images = data.data.numpy()
    assert data.labels is not None
    labels = data.labels.numpy()
    return images, {int(c): images[int(np.argmax(labels == c))] for c in range(10)}


def memorizing_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights of a conditional 8 px DCGAN (latentDim 16, width 8) that outputs training digit #c for label c,
    whatever z: the label embedding is one-hot, the first transposed conv paints each digit's pre-tanh values
    as a 4x4 map per (row parity, column parity, sign) channel, and the last one puts each channel's values on
    its own pixel parity class."""
    _, by_label = digits_by_label()
    out = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in state.items()}
    embed = out["input.embed.weight"]  # (10, 16)
    latent_dim = 16
    w1 = out["main.0.weight"]  # (latent + embed, 8, 4, 4)
    w2 = out["main.3.weight"]  # (8, 1, 4, 4)
    assert embed.shape == (10, 16) and w1.shape == (32, 8, 4, 4) and w2.shape == (8, 1, 4, 4), (embed.shape, w1.shape)
    for label in range(10):
        embed[label, label] = 1.0
        pre = np.arctanh(np.clip(by_label[label][0], -0.999, 0.999))  # (8, 8)
        for parity in range(4):
            a, b = divmod(parity, 2)
            block = torch.from_numpy(pre[a::2, b::2].astype(np.float32))  # (4, 4): pixel (2m+a, 2n+b)
            w1[latent_dim + label, 2 * parity] = block.clamp(min=0)
            w1[latent_dim + label, 2 * parity + 1] = (-block).clamp(min=0)
    for parity in range(4):
        a, b = divmod(parity, 2)
        w2[2 * parity, 0, 1 + a, 1 + b] = 1.0
        w2[2 * parity + 1, 0, 1 + a, 1 + b] = -1.0
    out["main.1.weight"] = torch.ones_like(out["main.1.weight"])
    out["main.1.running_var"] = torch.ones_like(out["main.1.running_var"])
    return out


def conditional_digits_job(name: str = "cdigits") -> dict[str, Any]:
    return digits_job(name, model={"numClasses": 10, "latentDim": 16, "width": 8}, training={"steps": 1},
                      checkpoint={"everySteps": 1})


def write_memorization_index(step_uri: str, name: str = "memorization_index.safetensors") -> str:
    """An index of the digits training images beside the checkpoint."""
    images, _ = digits_by_label()
    uri = storage.join(step_uri, name)
    storage.open_store(uri).put_bytes(uri, MemorizationIndex.build(images).to_bytes())
    return uri


# ------------------------------------------------------------------------------------------------ safety parts


class FailingFilter:
    """A safety filter that answers its first call (the model's load-time smoke test) and raises on every call
    after it, like a filter whose dependency went away after start-up. Load as 'tests.support.serving:FailingFilter'."""

    name = "always-fails"

    def __init__(self, works_for: int = 1) -> None:
        self.works_for = works_for
        self.calls = 0

    def check(self, samples: list[Sample], context: RequestContext) -> list[Verdict]:
        self.calls += 1
        if self.calls <= self.works_for:
            return [Verdict(self.name, "pass") for _ in samples]
        raise RuntimeError("this filter is broken on purpose")


class FlagEverything:
    """An NSFW detector that finds an exposed breast (score 0.93) in every image."""

    def detect(self, images: list[np.ndarray]) -> list[list[Detection]]:
        return [[Detection("FEMALE_BREAST_EXPOSED", 0.93, (0, 0, 4, 4))] for _ in images]


def api_keys_file(path: Path, keys: dict[str, str]) -> Path:
    """A key file: ``{key_id: key}`` stored as ``key_id:sha256(key)`` lines."""
    lines = ["# test keys"] + [f"{kid}:{hashlib.sha256(key.encode()).hexdigest()}" for kid, key in keys.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------------------------ TCP proxy


class TcpProxy:
    """127.0.0.1:<port> → target. ``cut()`` closes the listener and every connection (clients get "connection
    refused" at once); ``restore()`` listens on the same port again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()
        return self

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.close()
            self._conns.clear()
        if self._thread is not None:
            self._thread.join(5)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()


def binomial_tolerance(n: int, p: float, sigmas: float = 4.0) -> float:
    return sigmas * math.sqrt(n * p * (1 - p))


# ------------------------------------------------------------------------------------------------ pytest fixtures


@dataclass(frozen=True)
class ServingCheckpoints:
    """Real checkpoints for serving tests (file://). ``digits[i]``: steps 10, 20, 30 of one 8 px DCGAN run
    (20 and 30 carry a memorization index of the training digits and produce outputs every filter passes)."""

    root: Path
    digits: list[str]
    grid: list[str]
    memorizing: str  # conditional; outputs training digit #c for label c; index beside it
    constant: str  # every generator weight 0.01: constant images
    broken: str  # generator weights that do not match the manifest's checksum (and are not safetensors at all)
    # Another checkpoint's generator weights (valid safetensors of the same architecture: they parse and would load)
    # under this manifest, whose checksum they fail: only the checksum check can refuse them.
    tampered: str = ""


@pytest.fixture(scope="session")
def serving_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> ServingCheckpoints:
    root = tmp_path_factory.mktemp("serving-ckpt")
    torch.manual_seed(0)
    digit_steps = trained_digits(root / "runs")
    for step in digit_steps[1:]:
        write_memorization_index(step)
    grid_steps = trained_grid(root / "runs")
    cond = train(conditional_digits_job(), root / "runs")
    memorizing = derive_checkpoint(cond[-1], (root / "memorizing").as_uri(), memorizing_weights)
    write_memorization_index(memorizing)
    constant = derive_checkpoint(digit_steps[-1], (root / "constant").as_uri(), constant_weights)
    broken = derive_checkpoint(digit_steps[-1], (root / "broken").as_uri(), lambda s: s)
    target = storage.join(broken, "generator_ema.safetensors")
    storage.open_store(target).put_bytes(target, b"not the weights the manifest promised")
    tampered = derive_checkpoint(digit_steps[-1], (root / "tampered").as_uri(), lambda s: s)
    write_memorization_index(tampered)
    swapped = storage.join(digit_steps[0], "generator_ema.safetensors")
    target = storage.join(tampered, "generator_ema.safetensors")
    storage.open_store(target).put_bytes(target, storage.open_store(swapped).get_bytes(swapped))
    return ServingCheckpoints(root, digit_steps, grid_steps, memorizing, constant, broken, tampered)
