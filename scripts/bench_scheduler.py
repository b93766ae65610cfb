#!/usr/bin/env python
"""Scheduler efficiency, measured in one run on an embedded Ray instance.

A scripted model of fixed latency L (tests/scripted_backend.py, the same double the
scheduler tests use) stands in for a GPU pipeline or an API, so what is measured is the
scheduler, the actors and Ray, not a model.

Prints, for each case, the makespan (first call start -> last call end, as the replicas
themselves recorded it) against the ideal ceil(N/P)*L, and the design card's success
metric: N <= P images within 150% of one image's time, for an API, a local model of one image per
call, and a local model whose memory plan holds 4 images per call (time per image: the replica
count is decided by makespan, cluster/replica_choice.py, so they spread over idle cards).

    python scripts/bench_scheduler.py [--latency 2.0]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def makespan(log: Path) -> float:
    from tests.scripted_backend import read_log

    events = read_log(log)
    starts = [e["t"] for e in events if e["event"] == "start"]
    ends = [e["t"] for e in events if e["event"] == "end"]
    return max(ends) - min(starts)


def run_case(base: Path, name: str, spec: dict, n: int, p: int) -> float:
    from cluster.pipeline.run import run_generation
    from tests.helpers import make_request, quick_limits, scripted_registry

    folder = base / name
    folder.mkdir()
    registry = scripted_registry(folder, {"model": spec})
    request = make_request(registry, folder, folder_name=str(folder / "out"), models="model", image_count=n,
                           max_parallel=p, generation_strategy="parallel")
    result = run_generation(request, registry, quick_limits())
    assert len(result.outcome.images) == n, result.outcome.failures
    return makespan(folder / "calls.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=2.0, help="seconds per generation call (L)")
    args = parser.parse_args()
    latency = args.latency

    import ray

    from cluster.planning.placement import GPU_MEMORY_RESOURCE

    os.environ.setdefault("KAMUI_CACHE_DIR", tempfile.mkdtemp(prefix="kamui-bench-"))
    # four logical 24 GB cards: the local case gets one replica per card, as on a 4-GPU node
    ray.init(address="local", num_cpus=8, num_gpus=4, resources={GPU_MEMORY_RESOURCE: 96}, include_dashboard=False,
             log_to_driver=False, logging_level=logging.ERROR)
    remote = {"remote": True, "rate_limit": {"concurrent_limit": 16}, "script": {"latency": latency}}
    local = {"gpus": 1, "gpu_memory_gb": 20, "script": {"latency": latency}}
    # a GPU pipeline whose plan holds 4 images per call, each costing what one alone does
    batched = {"gpus": 1, "gpu_memory_gb": 20, "max_batch_size": 4, "script": {"latency": 0.0, "per_image": latency}}
    cases = [("api", remote, 10, 3), ("api", remote, 9, 4), ("local", local, 8, 4), ("local", local, 10, 3)]
    print(f"latency L = {latency:.2f}s per call; makespan measured by the replicas' own start/end records\n")
    print(f"{'backend':8} {'N':>3} {'P':>3} {'ideal s':>8} {'measured s':>11} {'ratio':>6}  target <= 1.10")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        os.chdir(base)
        worst = 0.0
        for i, (kind, spec, n, p) in enumerate(cases):
            measured = run_case(base, f"{kind}-{i}", spec, n, p)
            ideal = math.ceil(n / p) * latency
            worst = max(worst, measured / ideal)
            print(f"{kind:8} {n:3d} {p:3d} {ideal:8.2f} {measured:11.2f} {measured / ideal:6.3f}")
        print(f"\nworst ratio to ceil(N/P)*L: {worst:.3f} ({'meets' if worst <= 1.1 else 'MISSES'} the 1.10 target)")

        print("\nDesign card success metric: N <= P images within 150% of one image's time")
        for kind, spec, p in (("api", remote, 4), ("local", local, 4), ("batch 4", batched, 4)):
            one = run_case(base, f"{kind}-one", spec, 1, p)
            many = run_case(base, f"{kind}-many", spec, p, p)
            ratio = many / one
            print(f"{kind:8} 1 image {one:6.2f}s, {p} images {many:6.2f}s: ratio {ratio:.3f} "
                  f"({'meets' if ratio <= 1.5 else 'MISSES'} <= 1.50)")
    ray.shutdown()


if __name__ == "__main__":
    main()
