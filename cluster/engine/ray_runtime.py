"""Start an embedded Ray instance or join a running cluster; shut down only what we started.

Only clusters that outlive their runs are joined: one named by host:port, or, for `auto` (and
for no address at all), the one `ray start` / `multi-image cluster up` left running on this
machine. Ray's own `auto` also joins any Ray process it finds here, another run's or a server's
private embedded instance included; that instance ends with its owner, and what a stranger put
into it (warm replicas, settings) with it.

Ray's token authentication (from Ray 2.52) is set on explicitly (RAY_AUTH_MODE=token) before
Ray starts or is joined, whatever Ray's default: an embedded instance generates its token in
``~/.ray/auth_token``, `cluster up` generates it before `ray start`, and joining a cluster sends
the token Ray finds there or in ``RAY_AUTH_TOKEN``. A RAY_AUTH_MODE the user set is kept.

Without --debug, nothing of Ray's reaches the screen: its logs stay in its session folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from cluster import env
from cluster.engine import session_watch
from cluster.errors import ImageGenError
from cluster.planning.placement import GPU_MEMORY_RESOURCE

NAMESPACE = "kamui-multi-image"
AUTH_MODE_VARIABLE = "RAY_AUTH_MODE"
# Logical CPUs of an embedded instance: model actors mostly wait on their GPU or a remote API,
# so the scheduling token must not be the number of cores of a small runner.
MIN_EMBEDDED_CPUS = 8


@dataclass(frozen=True)
class LocalGpus:
    count: int
    memory_gb: float  # sum over the cards
    note: str = ""  # what was found, when some card is not used, and why


@dataclass(frozen=True)
class Card:
    index: str
    uuid: str
    memory_gb: float


def detect_local_gpus() -> LocalGpus:
    """The cards of this machine via nvidia-smi (the driver stays free of torch/CUDA), as far as
    CUDA_VISIBLE_DEVICES lets this process see them, both read in PCI bus order."""
    order_note = env.pci_device_order()
    found = _detect_local_gpus()
    if order_note and found.count:
        return LocalGpus(found.count, found.memory_gb, "; ".join(n for n in (found.note, order_note) if n))
    return found


def _detect_local_gpus() -> LocalGpus:
    visible = env.cuda_visible_devices()
    if visible is not None and not visible.strip():
        return LocalGpus(0, 0.0, "CUDA_VISIBLE_DEVICES is set and empty: no GPU is used")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return LocalGpus(0, 0.0)  # a machine without NVIDIA's driver: CPU, nothing to explain
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return LocalGpus(0, 0.0, f"nvidia-smi is here but failed ({' '.join(str(exc).split())[:200]}): no GPU is used")
    cards = []
    for line in out.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 3:
            try:
                cards.append(Card(parts[0], parts[1], float(parts[2]) / 1024.0))
            except ValueError:
                continue
    return visible_cards(cards, visible)


def visible_cards(cards: list[Card], visible: str | None) -> LocalGpus:
    """The cards CUDA_VISIBLE_DEVICES selects, read as CUDA reads it: indices or (unique
    prefixes of) GPU UUIDs, up to the first entry that names no card."""
    if visible is None:
        return LocalGpus(len(cards), round(sum(c.memory_gb for c in cards), 2))
    chosen: list[Card] = []
    problem = ""
    for entry in (v.strip() for v in visible.split(",")):
        if entry.startswith("MIG-"):
            problem = (f"{entry!r} is a MIG instance, whose memory nvidia-smi's GPU list does not give; start Ray "
                       "yourself with --num-gpus and --resources='{\"gpu_memory_gb\": N}' and pass --address")
            break
        matches = [c for c in cards if entry == c.index or (entry.startswith("GPU-") and c.uuid.startswith(entry))]
        if len(matches) != 1 or matches[0] in chosen:
            problem = f"{entry!r} names no single card of this machine"
            break
        chosen.append(matches[0])
    found = ", ".join(f"{c.index} ({c.uuid}, {c.memory_gb:.0f} GiB)" for c in cards) or "none"
    memory = round(sum(c.memory_gb for c in chosen), 2)
    if problem:
        used = f"using the {len(chosen)} card(s) before it" if chosen else "no GPU is used"
        note = f"CUDA_VISIBLE_DEVICES={visible!r}: {problem}; {used} (nvidia-smi found: {found})"
        return LocalGpus(len(chosen), memory, note)
    return LocalGpus(len(chosen), memory)


def embedded_init_kwargs(debug: bool = False, gpus: LocalGpus | None = None) -> dict:
    gpus = gpus or detect_local_gpus()
    kwargs: dict = {
        "num_cpus": max(os.cpu_count() or 1, MIN_EMBEDDED_CPUS),
        "num_gpus": gpus.count,
        "include_dashboard": False,
        "namespace": NAMESPACE,
        "log_to_driver": debug,
        "logging_level": logging.INFO if debug else logging.ERROR,
    }
    if gpus.count:
        kwargs["resources"] = {GPU_MEMORY_RESOURCE: gpus.memory_gb}
    return kwargs


@dataclass(frozen=True)
class RunningCluster:
    """A Ray cluster found running on this machine (`ray start`, e.g. `multi-image cluster up`)."""

    address: str
    found_in: str


def _address_file() -> Path:
    try:
        from ray._common.utils import get_ray_address_file  # where `ray start` records its address

        return Path(get_ray_address_file(None))
    except Exception:  # noqa: BLE001 - an internal helper that may move between Ray releases
        return Path("/tmp/ray/ray_current_cluster")


def _answers(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def find_running_cluster() -> tuple[RunningCluster | None, str]:
    """The cluster `ray start` left running on this machine, and a note when its address file is
    stale (the cluster was killed without `ray stop`; Ray itself would try to join the dead address)."""
    path = _address_file()
    try:
        address = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None, ""
    if not address:
        return None, ""
    if not _answers(address):
        return None, f"{path} names {address}, where no Ray cluster answers (stale: started, then killed)"
    return RunningCluster(address, str(path)), ""


class RayRuntime:
    """Context manager: `with RayRuntime(address) as rt:` connects, and disconnects on exit
    only if it connected (an already initialised Ray, as in tests or a warm process, is reused).

    Without an address, a Ray cluster already running on this machine is joined, as `--address
    auto` would: its GPUs are the same cards, and a second Ray instance beside it would think it
    owns them too and place models into memory the warm replicas hold. When joining fails, or with
    `--address local`, a separate embedded instance starts, and its session folder is removed
    when it stops (Ray leaves one under /tmp/ray per instance otherwise). An owner that dies
    without stopping (SIGKILL) takes its instance with it: see `cluster.engine.session_watch`."""

    def __init__(self, address: str | None = None, debug: bool = False):
        self.address = address
        self.debug = debug
        self.owned = False
        self.embedded = False
        self.joined: RunningCluster | None = None
        self.notes: list[str] = []
        self.session_dir: Path | None = None
        self._latest_before: str | None = None
        self._watch: SessionWatch | None = None

    def describe(self) -> dict:
        """The report's view of where the run ran."""
        import ray

        info: dict = {"address": self.address if self.address not in (None, "local") else "embedded",
                      "embedded": self.embedded}
        if not self.owned and self.address is None and ray.is_initialized():
            # a process of the cluster itself (the front door, an API replica): it ran where it lives
            info["address"] = ray.get_runtime_context().gcs_address
        if self.joined is not None:
            info.update(address=self.joined.address, joined_running_cluster=True)
        if not self.embedded and ray.is_initialized():
            info["gcs_address"] = ray.get_runtime_context().gcs_address
        if self.notes:
            info["notes"] = list(self.notes)
        return info

    def __enter__(self) -> "RayRuntime":
        import ray

        if ray.is_initialized():
            return self
        # ray.init replaces the driver's SIGTERM handler with sys.exit; the CLI's handler (stop
        # cleanly, write what is finished) must survive it
        main_thread = threading.current_thread() is threading.main_thread()
        previous_sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
        address = self.address or env.ray_address()
        try:
            if address and address != "local":
                self._join(address)
            else:
                running, stale = find_running_cluster() if address != "local" else (None, "")
                if stale:
                    self.notes.append(f"not joined: {stale}")
                if running is not None:
                    try:
                        self._join(running.address)
                        self.joined = running
                        self.notes.append(f"joined the Ray cluster running on this machine at {running.address} "
                                          f"(from {running.found_in}); `--address local` runs a separate instance")
                    except Exception as exc:  # noqa: BLE001 - e.g. its auth token is another user's
                        self.notes.append(f"could not join the Ray cluster running at {running.address} "
                                          f"({_one_line(exc)}); ran a separate embedded instance")
                if self.joined is None:
                    self._start_embedded()
        except ImageGenError:
            raise
        except Exception as exc:  # ConnectionError, RuntimeError, auth errors: all "no cluster"
            where = f"the Ray cluster at {address!r}" if address and address != "local" else "an embedded Ray instance"
            raise ImageGenError(
                "IMG_019",
                f"could not connect to {where}: {_one_line(exc)}. "
                "Check `ray status` on the head node and that this machine has the cluster's auth token.",
            ) from None
        finally:
            if main_thread and previous_sigterm is not None:
                signal.signal(signal.SIGTERM, previous_sigterm)
        self.owned = True
        return self

    def _join(self, address: str) -> None:
        join(address, self.debug)

    def _start_embedded(self) -> None:
        import ray

        latest = _address_file().parent / "session_latest"
        self._latest_before = os.readlink(latest) if latest.is_symlink() else None
        gpus = detect_local_gpus()
        if gpus.note:
            self.notes.append(gpus.note)
        require_token_auth()
        context = ray.init(address="local", **embedded_init_kwargs(self.debug, gpus))
        if not self.debug:
            mute_ray_error_lines()
        session = (getattr(context, "address_info", None) or {}).get("session_dir")
        self.session_dir = Path(session) if session else None
        self.embedded = True
        if self.session_dir is not None:
            self._watch = SessionWatch.start(self.session_dir, keep_folder=self.debug,
                                             latest_before=self._latest_before)
            sweep_orphans(self.session_dir.parent)  # embedded sessions whose owner died unwatched

    def __exit__(self, *exc_info) -> None:
        if self.owned:
            import ray

            ray.shutdown()
            self.owned = False
            if self.embedded and self.debug and self.session_dir is not None:  # kept to be read, never swept
                (self.session_dir / session_watch.OWNER_FILE).unlink(missing_ok=True)
            elif self.embedded:
                self._remove_session()
            if self._watch is not None:
                self._watch.done()
                self._watch = None

    def _remove_session(self) -> None:
        """The embedded instance's logs and sockets: one folder per run, never reused. (--debug keeps
        them for reading.)"""
        if self.session_dir is not None:
            session_watch.remove_folder(self.session_dir, self._latest_before)


class SessionWatch:
    """The embedded instance's watcher (cluster/engine/session_watch.py), started beside it: it cleans
    the session up when the pipe to this process ends without `done`."""

    def __init__(self, process: subprocess.Popen):
        self.process = process

    @classmethod
    def start(cls, session: Path, keep_folder: bool = False, latest_before: str | None = None) -> "SessionWatch | None":
        import ray

        ray_dir = os.path.dirname(ray.__file__)
        session_watch.write_owner(session, os.getpid(), ray_dir)
        command = [sys.executable, "-I", session_watch.__file__, str(session), ray_dir]
        if keep_folder:
            command.append("--keep-folder")
        if latest_before:
            command += ["--latest-before", latest_before]
        try:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        except OSError:  # the next embedded start removes the session if this process dies
            return None
        return cls(process)

    def done(self) -> None:
        """The owner stopped Ray itself: the watcher ends without touching anything."""
        try:
            self.process.stdin.write(session_watch.DONE)
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


def sweep_orphans(root: Path) -> list[Path]:
    try:
        return session_watch.sweep_orphans(root)
    except OSError:
        return []


NO_CLUSTER_HERE = ("no Ray cluster started with `multi-image cluster up` or `ray start` runs on this machine (a run's "
                   "or a server's own embedded instance is never joined); start one with `multi-image cluster up`")


def resolve_address(address: str) -> str:
    """The host:port to join for `address`: itself, or for `auto` the cluster `ray start` left
    running on this machine (IMG_019 when there is none)."""
    if address != "auto":
        return address
    running, stale = find_running_cluster()
    if running is None:
        raise ImageGenError("IMG_019", NO_CLUSTER_HERE + (f" ({stale})" if stale else "") + ".")
    return running.address


def join(address: str, debug: bool = False) -> str:
    """ray.init on the cluster at `address` (host:port, or `auto`: the one `ray start` left here),
    with token authentication; returns the address joined."""
    import ray

    target = resolve_address(address)
    if os.environ.get("RAY_ADDRESS"):  # Ray prefers the variable to the address it is given
        os.environ["RAY_ADDRESS"] = target
    require_token_auth()
    ray.init(address=target, namespace=NAMESPACE, log_to_driver=debug,
             logging_level=logging.INFO if debug else logging.ERROR)
    if not debug:
        mute_ray_error_lines()
    return target


def require_token_auth() -> None:
    """RAY_AUTH_MODE=token for this process and the Ray processes it starts, unless the user chose
    a mode. Set explicitly, Ray neither decides by itself (on a join it enables token auth only when
    a token file exists) nor prints, on every command, that it turned it on by default."""
    if os.environ.get(AUTH_MODE_VARIABLE) is not None:
        return
    os.environ[AUTH_MODE_VARIABLE] = "token"
    try:  # Ray caches its configuration when first imported: read the variable again
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):
        pass


def mute_ray_error_lines() -> None:
    """Ray's driver prints the cluster's error messages ("(raylet) Task ... will be retried", a
    worker killed by Ctrl-C) on stdout whatever `log_to_driver` says. The run reports its failures
    itself, so without --debug they go to Ray's logger at debug level instead of the screen."""
    try:
        from ray._private import worker
    except ImportError:
        return
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "kamui_muted", False):
        return

    def route(data, ignore_prefix):
        if data.get("pid") == "raylet":
            logging.getLogger("ray").debug("(raylet) %s", " ".join(data.get("lines", [])))
            return
        original(data, ignore_prefix)

    route.kamui_muted = True
    worker.print_to_stdstream = route


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
