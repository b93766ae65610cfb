"""Calls queued at one replica share pipeline calls; a cancelled caller is answered at once."""

from __future__ import annotations

import threading
import time

import pytest

from actors.core.coalescing import Coalescer
from cluster.errors import ImageGenError
from cluster.work import CallOptions, ImageTask


def tasks(first: int, count: int, size: int = 64) -> list[ImageTask]:
    return [ImageTask(i, "m", f"p{i}", i, size, size, 2, 0.0) for i in range(first, first + count)]


class Pipeline:
    def __init__(self, seconds: float = 0.3):
        self.seconds = seconds
        self.calls: list[list[int]] = []
        self.cancelled: list[str] = []

    def run(self, batch, call_id, options):
        self.calls.append([t.index for t in batch])
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            if call_id in self.cancelled:
                raise ImageGenError("IMG_003", "stopped")
            time.sleep(0.01)
        return [f"image-{t.index}" for t in batch]

    def cancel(self, call_id, code, reason):
        self.cancelled.append(call_id)


def call_all(coalescer: Coalescer, batches: list[list[ImageTask]], stagger: float = 0.02) -> dict:
    results: dict = {}

    def one(n: int, batch):
        try:
            results[n] = coalescer.submit(batch, f"call-{n}", CallOptions(budget_s=30))
        except ImageGenError as exc:
            results[n] = exc

    threads = []
    for n, batch in enumerate(batches):
        threads.append(threading.Thread(target=one, args=(n, batch)))
        threads[-1].start()
        time.sleep(stagger)
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_calls_waiting_together_share_the_next_pipeline_call():
    pipeline = Pipeline()
    coalescer = Coalescer(pipeline.run, pipeline.cancel, max_images=4)
    results = call_all(coalescer, [tasks(0, 1), tasks(1, 1), tasks(2, 2), tasks(4, 1), tasks(5, 1)])
    # the first runs alone; the four that queued meanwhile fill two pipeline calls of at most 4 images
    assert pipeline.calls == [[0], [1, 2, 3], [4, 5]] or pipeline.calls == [[0], [1, 2, 3, 4], [5]]
    assert results == {0: ["image-0"], 1: ["image-1"], 2: ["image-2", "image-3"], 3: ["image-4"], 4: ["image-5"]}
    assert coalescer.merged_calls >= 1


def test_only_calls_of_one_size_share_a_pipeline_call():
    pipeline = Pipeline()
    coalescer = Coalescer(pipeline.run, pipeline.cancel, max_images=8)
    call_all(coalescer, [tasks(0, 1), tasks(1, 1, size=128), tasks(2, 1), tasks(3, 1, size=128)])
    assert pipeline.calls[0] == [0] and sorted(map(sorted, pipeline.calls[1:])) == [[1, 3], [2]]


def test_a_cancelled_caller_is_answered_at_once_and_the_others_keep_their_images():
    pipeline = Pipeline(seconds=1.0)
    coalescer = Coalescer(pipeline.run, pipeline.cancel, max_images=4)
    results: dict = {}
    blocker = threading.Thread(target=lambda: results.update(block=coalescer.submit(tasks(9, 1), "block", None)))
    blocker.start()
    time.sleep(0.1)
    threads = [threading.Thread(target=lambda n=n: results.update({n: _submit(coalescer, n)})) for n in (0, 1)]
    for thread in threads:
        thread.start()
    time.sleep(1.2)  # both now share one pipeline call
    started = time.monotonic()
    coalescer.cancel("call-0", "IMG_003", "timeout_per_image reached")
    threads[0].join(timeout=5)
    assert time.monotonic() - started < 0.5 and isinstance(results[0], ImageGenError)
    threads[1].join(timeout=5)
    assert results[1] == ["image-1"] and pipeline.cancelled == []  # the shared call was not stopped
    blocker.join()


def test_a_call_alone_is_stopped_in_its_pipeline_and_a_queued_one_never_starts():
    pipeline = Pipeline(seconds=1.0)
    coalescer = Coalescer(pipeline.run, pipeline.cancel, max_images=4)
    results: dict = {}
    first = threading.Thread(target=lambda: results.update(a=_submit(coalescer, "a")))
    first.start()
    time.sleep(0.1)
    second = threading.Thread(target=lambda: results.update(b=_submit(coalescer, "b")))
    second.start()
    time.sleep(0.1)
    coalescer.cancel("call-b", "IMG_021", "interrupted")
    coalescer.cancel("call-a", "IMG_003", "timeout")
    first.join(timeout=5)
    second.join(timeout=5)
    assert isinstance(results["a"], ImageGenError) and pipeline.cancelled == ["call-a"]
    assert isinstance(results["b"], ImageGenError) and results["b"].code == "IMG_021"
    assert len(pipeline.calls) == 1


def _submit(coalescer, n):
    try:
        return coalescer.submit(tasks(n if isinstance(n, int) else 0, 1), f"call-{n}", None)
    except ImageGenError as exc:
        return exc


@pytest.mark.usefixtures("ray_session")
def test_two_runs_sharing_a_warm_replica_share_its_pipeline_calls(tmp_path):
    import ray

    from cluster.engine.resident import actor_handle, registry_actor
    from cluster.pipeline.run import run_generation
    from cluster.entrypoints.warm import bring_down, bring_up
    from models.scorers import load_scoring
    from tests.helpers import make_request, quick_limits, scripted_registry

    registry = scripted_registry(tmp_path, {"local": {"max_batch_size": 4, "script": {"latency": 0.8}}})
    try:
        bring_up(registry, ["local"], load_scoring(), "none", quick_limits())
        outcomes = {}

        def run(name: str) -> None:
            request = make_request(registry, tmp_path, models="local", folder_name=name, image_count=1)
            outcomes[name] = run_generation(request, registry, quick_limits(), resident=True)

        threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b", "c")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert all(len(outcomes[n].outcome.images) == 1 for n in "abc")
        (name,) = [e["name"] for e in ray.get(registry_actor().entries.remote())]
        assert ray.get(actor_handle(name).stats.remote())["merged_calls"] >= 1
    finally:
        bring_down()
