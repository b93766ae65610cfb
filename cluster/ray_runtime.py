"""Start an embedded Ray instance or join a running cluster; shut down only what we started.

Token authentication (on by default since Ray 2.5x) stays on: an embedded instance
generates its token, and joining a cluster uses the token Ray finds in
``~/.ray/auth_token`` or ``RAY_AUTH_TOKEN``, as `ray start` left it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass

from cluster.errors import ImageGenError
from cluster.placement import GPU_MEMORY_RESOURCE

NAMESPACE = "kamui-multi-image"
# Logical CPUs of an embedded instance: model actors mostly wait on their GPU or a remote API,
# so the scheduling token must not be the number of cores of a small runner.
MIN_EMBEDDED_CPUS = 8


@dataclass(frozen=True)
class LocalGpus:
    count: int
    memory_gb: float  # sum over the cards


def detect_local_gpus() -> LocalGpus:
    """The cards of this machine via nvidia-smi (the driver stays free of torch/CUDA)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "" or not shutil.which("nvidia-smi"):
        return LocalGpus(0, 0.0)
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return LocalGpus(0, 0.0)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    allowed = {v.strip() for v in visible.split(",")} if visible else None
    cards = []
    for line in out.strip().splitlines():
        index, _, mib = (part.strip() for part in line.partition(","))
        if allowed is None or index in allowed:
            cards.append(float(mib) / 1024.0)
    return LocalGpus(len(cards), round(sum(cards), 2))


def embedded_init_kwargs(debug: bool = False) -> dict:
    gpus = detect_local_gpus()
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


class RayRuntime:
    """Context manager: `with RayRuntime(address) as rt:` connects, and disconnects on exit
    only if it connected (an already initialised Ray, as in tests or a warm process, is reused)."""

    def __init__(self, address: str | None = None, debug: bool = False):
        self.address = address
        self.debug = debug
        self.owned = False
        self.embedded = False

    def __enter__(self) -> "RayRuntime":
        import ray

        if ray.is_initialized():
            return self
        # ray.init replaces the driver's SIGTERM handler with sys.exit; the CLI's handler (stop
        # cleanly, write what is finished) must survive it
        main_thread = threading.current_thread() is threading.main_thread()
        previous_sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
        try:
            if self.address:
                ray.init(
                    address=self.address, namespace=NAMESPACE, log_to_driver=self.debug,
                    logging_level=logging.INFO if self.debug else logging.ERROR,
                )
            else:
                ray.init(**embedded_init_kwargs(self.debug))
                self.embedded = True
        except ImageGenError:
            raise
        except Exception as exc:  # ConnectionError, RuntimeError, auth errors: all "no cluster"
            where = f"the Ray cluster at {self.address!r}" if self.address else "an embedded Ray instance"
            raise ImageGenError(
                "IMG_019",
                f"could not connect to {where}: {' '.join(str(exc).split())[:300]}. "
                "Check `ray status` on the head node and that this machine has the cluster's auth token.",
            ) from None
        finally:
            if main_thread and previous_sigterm is not None:
                signal.signal(signal.SIGTERM, previous_sigterm)
        self.owned = True
        return self

    def __exit__(self, *exc_info) -> None:
        if self.owned:
            import ray

            ray.shutdown()
            self.owned = False
