"""A test double for a model's timing and failures, behind the real generator interface.

It stands in only for the model (not for Ray, the actor, the scheduler or the writer):
a `custom` backend in a test models.yaml whose `call_args` is the script:

  latency: 0.2          seconds per call            per_image: 0.0   extra seconds per image
  load_seconds: 0.0     time to "load"              log: /path       JSON lines of call start/end
  counter: /path        a call counter shared by every replica and restart
  fail_calls: [1, 2]    global call numbers that fail ...   fail_code: IMG_006   ... with this code
  hang: 30              seconds a call hangs (cancellable unless ignore_cancel: true)
  hang_calls: [1]       which calls hang (default: all, when hang is set)
  ignore_budget: true   do not stop at the call's own timeout_per_image (only the driver's cancel does)
  crash_calls: [3]      global call numbers whose process exits hard (the replica dies)
  sharp_variations: [detailed]  prompt variations that yield a sharp image (others are blurred)
  fill_disk: /path/file  on the first call, fill that file's filesystem (a "disk full" mid-run)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from cluster.errors import ImageGenError
from cluster.output.png import encode_png
from cluster.work import GeneratedImage, ImageTask


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray (plain unit use)
        return None


def bump_counter(path: str) -> int:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        text = handle.read().strip()
        value = int(text or 0) + 1
        handle.seek(0)
        handle.truncate()
        handle.write(str(value))
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_UN)
    return value


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _fill(path: str) -> None:
    """Write zeros until the filesystem is full."""
    block = b"\0" * (1 << 20)
    with open(path, "wb") as handle:
        try:
            while True:
                handle.write(block)
                handle.flush()
        except OSError:
            pass


def max_overlap(events: list[dict]) -> int:
    """Most calls in flight at once, from the start/end records the replicas wrote."""
    points = sorted((e["t"], 1 if e["event"] == "start" else -1) for e in events if e["event"] in ("start", "end"))
    current = peak = 0
    for _, delta in sorted(points, key=lambda p: (p[0], p[1])):  # ends before starts at equal times
        current += delta
        peak = max(peak, current)
    return peak


class ScriptedGenerator:
    def __init__(self, spec, cache_root, replica: str):
        self.spec = spec
        self.script = dict(spec.call_args)
        self.replica = replica
        self.device = "cpu"
        self.dtype = "float32"
        self._cancelled: dict[str, str] = {}
        # a local replica runs one call at a time, like a GPU pipeline; an API takes many
        self._lock = threading.Lock() if spec.is_local else contextlib.nullcontext()
        started = time.perf_counter()
        time.sleep(float(self.script.get("load_seconds", 0.0)))
        self.load_seconds = time.perf_counter() - started

    def _log(self, **record) -> None:
        path = self.script.get("log")
        if path:
            line = json.dumps({"t": time.time(), "replica": self.replica, "pid": os.getpid(), "node": _node_id(),
                               "model": self.spec.id, **record})
            with open(path, "a") as handle:
                handle.write(line + "\n")

    def cancel(self, call_id: str, code: str = "IMG_003", reason: str = "cancelled") -> None:
        self._cancelled[call_id] = f"{code}|{reason}"

    def _sleep(self, seconds: float, call_id: str, cancellable: bool = True, budget_end: float | None = None) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if cancellable and budget_end is not None and time.monotonic() > budget_end:
                raise ImageGenError("IMG_003", f"{self.spec.id}: exceeded timeout_per_image")
            if cancellable and call_id in self._cancelled:
                code, _, reason = self._cancelled.pop(call_id).partition("|")
                self._log(event="cancelled", call=call_id)
                raise ImageGenError(code, f"{self.spec.id}: {reason}")
            time.sleep(0.02)

    def generate(self, tasks: list[ImageTask], call_id: str = "", options=None) -> list[GeneratedImage]:
        with self._lock:
            budget_end = None
            if options is not None and options.budget_s and not self.script.get("ignore_budget"):
                budget_end = time.monotonic() + options.budget_s
            number = bump_counter(self.script["counter"]) if self.script.get("counter") else 0
            self._log(event="start", call=call_id, n=len(tasks), number=number,
                      indices=[t.index for t in tasks], prompts=[t.prompt for t in tasks])
            try:
                if number in self.script.get("crash_calls", []):
                    os._exit(1)
                if self.script.get("fill_disk") and number == 1:
                    _fill(self.script["fill_disk"])
                hang_calls = self.script.get("hang_calls")
                if self.script.get("hang") and (hang_calls is None or number in hang_calls):
                    self._sleep(float(self.script["hang"]), call_id, not self.script.get("ignore_cancel", False),
                                budget_end)
                latency = float(self.script.get("latency", 0.05)) + float(self.script.get("per_image", 0.0)) * len(tasks)
                self._sleep(latency, call_id, budget_end=budget_end)
                if number in self.script.get("fail_calls", []):
                    code = self.script.get("fail_code", "IMG_020")
                    raise ImageGenError(code, f"scripted failure {code} on call {number}")
                return [self._image(task, latency / len(tasks)) for task in tasks]
            finally:
                self._log(event="end", call=call_id)

    def _image(self, task: ImageTask, seconds: float) -> GeneratedImage:
        rng = np.random.default_rng(task.seed)
        y, x = np.mgrid[0:task.height, 0:task.width]
        pixels = np.stack([(x // 8 % 2) * 180 + 40, (y // 8 % 2) * 160 + 50,
                           np.full_like(x, int(rng.integers(30, 220)))], -1).astype(np.uint8)
        image = Image.fromarray(pixels)
        sharp = self.script.get("sharp_variations")
        if sharp is not None and task.prompt_variation not in sharp:
            image = image.filter(ImageFilter.GaussianBlur(3))
        return GeneratedImage(task, encode_png(image, task), seconds, self.replica, task.width, task.height,
                              self.spec.weights)
