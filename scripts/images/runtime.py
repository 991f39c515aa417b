"""Run an image's process the way a kubelet and a container runtime would, without a container engine.

There is no Docker engine, containerd or runc on these machines; buildah is. ``buildah run`` can execute a command
in an image, but it has no read-only root file system, no way to drop the bounding capabilities or set
``no_new_privs``, and it runs as root unless told otherwise, so it cannot show that an image works *under the
chart's securityContext*. This module does what a runtime does for that, with the kernel's own calls:

1. ``buildah from`` the image (a working container: with overlay storage, an empty upper layer on top of the image's
   layers) and ``buildah mount`` it: that is the container's root file system. Mount points of the pod's volumes
   are created in it (a runtime does the same), nothing else is written;
2. in the child process, before ``exec``: a private mount namespace (``unshare(CLONE_NEWNS)``, propagation private);
   the root bind-mounted onto itself; ``/proc``, a ``/dev`` with only the usual devices and a ``/dev/shm`` tmpfs, a
   read-only ``/sys``; the pod's volumes bind-mounted at their ``mountPath`` (read-only where the pod says so);
   shells masked with ``/dev/null`` (``hide_shells``: proves that nothing needs one); then the root remounted
   read-only (``readOnlyRootFilesystem``), ``chroot``, every capability dropped from the bounding set, the
   supplementary groups (``fsGroup``), ``setgid``/``setuid`` to ``runAsGroup``/``runAsUser`` (which clears the
   permitted and effective capabilities), and ``PR_SET_NO_NEW_PRIVS`` (``allowPrivilegeEscalation: false``);
3. ``exec`` of the command resolved as Kubernetes does (``command`` replaces the ENTRYPOINT, ``args`` the CMD) in
   the environment of the image's config plus the container's ``env``.

What differs from a cluster, and why it does not matter for what the smoke runs check: the network is the host's
(servers the tests start listen on 127.0.0.1; ports come from the chart's values), there is no PID or UTS
namespace, no cgroup limits and no seccomp filter (RuntimeDefault) - the kernel would refuse some syscalls there,
none that a Python server makes. Needs root (mounts, chroot); :func:`available` says why not when it cannot run.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine import Engine

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
SHELLS = ("sh", "dash", "bash", "ash", "zsh", "busybox")


@dataclass(frozen=True)
class Mount:
    """A host file or folder at `target` in the container."""

    source: Path
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class Security:
    """The parts of a pod's and container's securityContext this runtime applies."""

    run_as_user: int
    run_as_group: int
    fs_group: int | None = None
    read_only_root: bool = True
    no_new_privs: bool = True
    drop_all_capabilities: bool = True

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any], container: Mapping[str, Any], image_user: str = "") -> Security:
        """The effective context: the container's fields win over the pod's, the image's USER fills the gaps."""
        pod_ctx, ctr = dict(pod.get("securityContext") or {}), dict(container.get("securityContext") or {})
        user_part, _, group_part = image_user.partition(":")
        uid = ctr.get("runAsUser", pod_ctx.get("runAsUser", int(user_part) if user_part.isdigit() else 0))
        gid = ctr.get("runAsGroup", pod_ctx.get("runAsGroup", int(group_part) if group_part.isdigit() else 0))
        drop = {c.upper() for c in ((ctr.get("capabilities") or {}).get("drop") or [])}
        return cls(run_as_user=int(uid), run_as_group=int(gid), fs_group=pod_ctx.get("fsGroup"),
                   read_only_root=bool(ctr.get("readOnlyRootFilesystem", False)),
                   no_new_privs=ctr.get("allowPrivilegeEscalation", True) is False,
                   drop_all_capabilities="ALL" in drop)


@dataclass
class ImageConfig:
    """What the runtime needs from an image's OCI config."""

    user: str
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    workdir: str
    exposed_ports: list[str]
    labels: dict[str, str]
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> ImageConfig:
        env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
        return cls(user=str(config.get("User") or ""), env=env, entrypoint=list(config.get("Entrypoint") or []),
                   cmd=list(config.get("Cmd") or []), workdir=str(config.get("WorkingDir") or "/"),
                   exposed_ports=sorted(config.get("ExposedPorts") or {}), labels=dict(config.get("Labels") or {}),
                   raw=dict(config))

    def argv(self, command: Sequence[str] | None = None, args: Sequence[str] | None = None) -> list[str]:
        """Kubernetes' rule: `command` replaces the ENTRYPOINT (and drops the CMD), `args` replaces the CMD."""
        if command:
            return [*command, *(args or [])]
        return [*self.entrypoint, *(args if args is not None else self.cmd)]


def available() -> str | None:
    """None when images can be run here, else the reason."""
    if os.geteuid() != 0:
        return "running an image without a container engine needs root (mount namespaces, chroot)"
    if ctypes.util.find_library("c") is None:  # pragma: no cover
        return "no libc to call unshare/mount through"
    return None


def image_config(engine: Engine, image: str) -> ImageConfig:
    return ImageConfig.parse(engine.config(image)["config"])


def _resolve(argv0: str, path: str, root: Path) -> str:
    """`argv0` looked up in the container's PATH (inside `root`), as a runtime does before exec."""
    if "/" in argv0:
        return argv0
    for folder in path.split(":"):
        candidate = f"{folder.rstrip('/')}/{argv0}"
        host = root / candidate.lstrip("/")
        if host.exists() or host.is_symlink():
            return candidate
    raise FileNotFoundError(f"{argv0}: not found in the image's PATH {path}")


def inside(root: Path, target: str) -> Path:
    """`target` as seen inside the container, as a host path under `root`: symbolic links are followed within the
    root (`/var/run` → `/run` is the container's `/run`, never the host's), as container runtimes do
    (filepath-securejoin). Components that do not exist yet are taken as they are."""
    parts = [p for p in target.split("/") if p not in ("", ".")]
    current = root
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise OSError(f"too many links resolving {target} in the image")
            link = os.readlink(candidate)
            parts = [p for p in link.split("/") if p not in ("", ".")] + parts
            if link.startswith("/"):
                current = root
            continue
        current = candidate
    return current


def _mountpoint(root: Path, target: str, is_dir: bool) -> Path:
    """Create the mount point in the container's writable layer (not on the image), as a runtime does; the host path
    to mount on."""
    path = inside(root, target)
    if is_dir:
        path.mkdir(parents=True, exist_ok=True)
    elif not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return path


class _Syscalls:
    def __init__(self) -> None:
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                                    ctypes.c_char_p]

    def _check(self, result: int, what: str) -> None:
        if result != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        enc = [None if s is None else s.encode() for s in (source, target, fstype, data)]
        self._check(self.libc.mount(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {source} on {target}")

    def unshare(self, flags: int) -> None:
        self._check(self.libc.unshare(flags), "unshare")

    def prctl(self, option: int, arg: int) -> None:
        self._check(self.libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl {option}")


def _enter(root: str, mounts: Sequence[tuple[Mount, str]], security: Security, workdir: str,
           hide: Sequence[str]) -> None:
    """The child's side, between fork and exec (see the module docstring). Runs as root; ends as the pod's user."""
    try:
        calls = _Syscalls()
        calls.unshare(CLONE_NEWNS)
        calls.mount(None, "/", None, MS_REC | MS_PRIVATE)
        calls.mount(root, root, None, MS_BIND | MS_REC)
        calls.mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        calls.mount("tmpfs", f"{root}/dev", "tmpfs", MS_NOSUID, "mode=755,size=65536k")
        for name in DEVICES:
            open(f"{root}/dev/{name}", "w").close()
            calls.mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                             ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")):
            os.symlink(target, f"{root}/dev/{name}")
        os.mkdir(f"{root}/dev/shm", 0o1777)
        calls.mount("shm", f"{root}/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=65536k")
        calls.mount("/sys", f"{root}/sys", None, MS_BIND | MS_REC)
        calls.mount(None, f"{root}/sys", None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        for mount, target in mounts:  # targets resolved inside the root beforehand (`inside`)
            calls.mount(str(mount.source), target, None, MS_BIND | MS_REC)
            if mount.read_only:
                calls.mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        for path in hide:
            calls.mount("/dev/null", f"{root}/{path.lstrip('/')}", None, MS_BIND)
        if security.read_only_root:
            calls.mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        os.chroot(root)
        os.chdir(workdir)
        if security.drop_all_capabilities:
            last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
            for cap in range(last + 1):
                calls.prctl(PR_CAPBSET_DROP, cap)
        groups = sorted({security.run_as_group, *([security.fs_group] if security.fs_group is not None else [])})
        os.setgroups(groups)
        os.setgid(security.run_as_group)
        os.setuid(security.run_as_user)  # from root to a non-root uid: permitted and effective capabilities go
        if security.no_new_privs:
            calls.prctl(PR_SET_NO_NEW_PRIVS, 1)
    except BaseException as exc:
        os.write(2, f"ganops image runtime: cannot start the container: {exc!r}\n".encode())
        raise


@dataclass
class Container:
    """One container of an image, started with :meth:`start`, stopped (and its working container removed) with
    :meth:`stop`. Output goes to `log_path`."""

    engine: Engine
    image: str
    argv: list[str]
    env: dict[str, str]
    mounts: list[Mount]
    security: Security
    log_path: Path
    workdir: str = "/"
    hide_shells: bool = True
    name: str = field(default_factory=lambda: f"ganops-run-{uuid.uuid4().hex[:10]}")
    process: subprocess.Popen[bytes] | None = None
    rootfs: Path | None = None
    hidden: list[str] = field(default_factory=list)

    def start(self) -> Container:
        self.engine.run("from", "--pull=never", "--quiet", "--name", self.name, self.image, capture=True)
        try:
            self.rootfs = Path(self.engine.output("mount", self.name).splitlines()[-1])
            for folder in ("proc", "dev", "sys"):
                if inside(self.rootfs, folder) != self.rootfs / folder:
                    raise OSError(f"/{folder} is a link in the image")
                _mountpoint(self.rootfs, folder, True)
            targets = [(mount, str(_mountpoint(self.rootfs, mount.target, mount.source.is_dir())))
                       for mount in self.mounts]
            if self.hide_shells:
                self.hidden = [f"/usr/bin/{shell}" for shell in SHELLS
                               if (self.rootfs / "usr/bin" / shell).is_file()
                               and not (self.rootfs / "usr/bin" / shell).is_symlink()]
            argv = [_resolve(self.argv[0], self.env.get("PATH", "/usr/bin:/bin"), self.rootfs), *self.argv[1:]]
            root, security, workdir, hidden = str(self.rootfs), self.security, self.workdir, list(self.hidden)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as log:
                log.write(f"===== {self.image}: {json.dumps(self.argv)} as {security.run_as_user}:"
                          f"{security.run_as_group}\n".encode())
                log.flush()
                self.process = subprocess.Popen(
                    argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, close_fds=True,
                    preexec_fn=lambda: _enter(root, targets, security, workdir, hidden),
                )
        except BaseException:
            self._remove()
            raise
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM (the kubelet's stop), SIGKILL after `grace`; then unmount and remove the working container."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(10)
            code = self.process.returncode
        self._remove()
        return code

    def _remove(self) -> None:
        self.engine.run("umount", self.name, check=False, capture=True)
        self.engine.run("rm", self.name, check=False, capture=True)

    def log(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_to_completion(container: Container, timeout: float) -> int:
    """Start, wait for the exit code (killing it after `timeout`), clean up."""
    container.start()
    try:
        return container.wait(timeout)
    except subprocess.TimeoutExpired:
        container.stop(grace=5)
        raise
    finally:
        container.stop()




class PodLauncher:
    """Runs a pod's container from its image, for `tests.support.node.Node(launcher=…)`: the node resolves the
    pod's environment and volumes as a kubelet does; this applies the image (its config's environment, ENTRYPOINT
    and CMD), the pod's securityContext and the volumes' ownership (``fsGroup``), and starts a :class:`Container`.

    `images` maps the image a pod names (``ghcr.io/ganops/trainer:0.1.0``) to the local image to run (default:
    the same name). `node_env` are the keys the node put into every environment itself (its ``image_env``): they
    are replaced by the image's own. Working containers are removed when their process ends.
    """

    def __init__(self, engine: Engine, images: Mapping[str, str] | None = None,
                 node_env: Sequence[str] = (), hide_shells: bool = True) -> None:
        self.engine = engine
        self.images = dict(images or {})
        self.node_env = set(node_env)
        self.hide_shells = hide_shells
        self.containers: list[Container] = []
        self._configs: dict[str, ImageConfig] = {}

    def config(self, image: str) -> ImageConfig:
        if image not in self._configs:
            self._configs[image] = image_config(self.engine, image)
        return self._configs[image]

    def container(self, pod: Mapping[str, Any], container: Mapping[str, Any], argv: Sequence[str],
                  env: Mapping[str, str], mounts: Mapping[str, str], log_path: Path) -> Container:
        image = self.images.get(str(container.get("image")), str(container.get("image")))
        config = self.config(image)
        spec = pod.get("spec") or {}
        security = Security.from_pod(spec, container, config.user)
        declared = len(container.get("command") or [])
        command = list(argv[:declared]) or None
        args = list(argv[declared:]) if "args" in container else None
        final_env = {**config.env, **{k: v for k, v in env.items() if k not in self.node_env}}
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        read_only = {m["mountPath"].rstrip("/") or "/": bool(m.get("readOnly")) for m in container.get("volumeMounts")
                     or []}
        kinds = {m["mountPath"].rstrip("/") or "/": next(iter(k for k in volumes.get(m["name"], {}) if k != "name"),
                                                            "") for m in container.get("volumeMounts") or []}
        for target, folder in mounts.items():
            _own(Path(folder), security.fs_group, empty_dir=kinds.get(target) == "emptyDir")
        binds = [Mount(Path(folder), target, read_only.get(target, False)) for target, folder in mounts.items()]
        return Container(self.engine, image, config.argv(command, args), final_env, binds, security, log_path,
                         workdir=str(container.get("workingDir") or config.workdir or "/"),
                         hide_shells=self.hide_shells)

    def __call__(self, pod: dict[str, Any], container: dict[str, Any], argv: list[str], env: dict[str, str],
                 mounts: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        started = self.container(pod, container, argv, env, mounts, log_path).start()
        self.containers.append(started)
        assert started.process is not None

        def reap() -> None:
            assert started.process is not None
            started.process.wait()
            started.stop()

        threading.Thread(target=reap, name=f"reap-{started.name}", daemon=True).start()
        return started.process

    def close(self) -> None:
        for container in self.containers:
            container.stop(grace=10)


def _own(path: Path, fs_group: int | None, *, empty_dir: bool) -> None:
    """What the kubelet does to a pod's volumes with `fsGroup`: group-owned by it (setgid folders); an emptyDir is
    world-writable (mode 0777, plus the setgid bit)."""
    if empty_dir:
        path.chmod(0o2777 if fs_group is not None else 0o777)
    if fs_group is None:
        return
    for item in [path, *path.rglob("*")]:
        os.chown(item, -1, fs_group, follow_symlinks=False)
        if item.is_dir() and not item.is_symlink():
            item.chmod(item.stat().st_mode & 0o7777 | 0o2000 | (0o070 if empty_dir else 0o050))
