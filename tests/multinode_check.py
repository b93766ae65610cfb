"""Multi-node placement on a real `ray.cluster_utils.Cluster`: a head without GPUs and
three nodes of one 24 GB (logical) card each. Run in its own process by
tests/test_placement.py, because the test session already holds its own Ray instance.

Prints one JSON document: what each scenario observed.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    from ray.cluster_utils import Cluster

    import ray
    from cluster.errors import ImageGenError
    from cluster.planning.placement import GPU_MEMORY_RESOURCE
    from cluster.pipeline.run import run_generation
    from tests.helpers import make_request, quick_limits, read_json, scripted_registry

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    for _ in range(4):  # the fourth replaces the node the "node lost" scenario removes
        cluster.add_node(num_cpus=4, num_gpus=1, resources={GPU_MEMORY_RESOURCE: 24})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="kamui-multi-image", log_to_driver=False, logging_level="ERROR")
    results: dict = {"nodes": len([n for n in ray.nodes() if n["Alive"]])}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            os.chdir(base)

            def run(name: str, specs: dict, **raw) -> dict:
                folder = base / name
                folder.mkdir()
                registry = scripted_registry(folder, specs)
                request = make_request(registry, folder, folder_name=str(folder / "out"), **raw)
                started = time.monotonic()
                try:
                    result = run_generation(request, registry, quick_limits(placement_timeout=5))
                except ImageGenError as refused:  # refused before it started: nothing written
                    return {"seconds": time.monotonic() - started, "images": 0, "error": refused.code,
                            "message": refused.message, "written": (folder / "out").exists(), "nodes": {}}
                report = read_json(folder / "out/metadata/generation-report.json")
                return {
                    "seconds": time.monotonic() - started,
                    "images": len(result.outcome.images),
                    "error": result.outcome.error.code if result.outcome.error else None,
                    "message": result.outcome.error.message if result.outcome.error else None,
                    "nodes": {m: [r["node_id"] for r in v["replicas"]] for m, v in report["models"].items()},
                }

            # 16 GB replicas: two never fit one 24 GB card, so three replicas use three nodes.
            results["spread"] = run("spread", {"mid": {"gpus": 0.5, "gpu_memory_gb": 16, "script": {"latency": 0.5}}},
                                    models="mid", image_count=3, max_parallel=3)
            # two different 16 GB models in one run: never packed onto the same card
            results["two_models"] = run("two", {
                "a": {"gpus": 0.5, "gpu_memory_gb": 16, "script": {"latency": 0.5}},
                "b": {"gpus": 0.5, "gpu_memory_gb": 16, "script": {"latency": 0.5}},
            }, models="a,b", image_count=1, max_parallel=2)
            # 5 GB replicas pack: four share one card (PACK keeps them on one node)
            results["pack"] = run("pack", {"small": {"gpus": 0.1, "gpu_memory_gb": 5, "script": {"latency": 0.5}}},
                                  models="small", image_count=4, max_parallel=4)
            # a model no card can hold fails fast
            results["too_big"] = run("big", {"huge": {"gpus": 1, "gpu_memory_gb": 40}}, models="huge")
            # a node lost mid-run: its replica comes back on another node and the run completes
            import threading

            from tests.scripted_backend import read_log

            folder = base / "lost"
            folder.mkdir()
            registry = scripted_registry(folder, {"mid": {"gpus": 0.5, "gpu_memory_gb": 16, "script": {"latency": 0.5}}})
            request = make_request(registry, folder, folder_name=str(folder / "out"), models="mid", image_count=6,
                                   max_parallel=1)
            holder: dict = {}
            runner = threading.Thread(target=lambda: holder.update(r=run_generation(request, registry, quick_limits())))
            runner.start()
            deadline = time.monotonic() + 60
            first = []
            while not first and time.monotonic() < deadline:
                first = [e for e in read_log(folder / "calls.jsonl") if e["event"] == "start"]
                time.sleep(0.1)
            victim = next(n for n in cluster.list_all_nodes() if n.node_id == first[0]["node"])
            cluster.remove_node(victim)
            runner.join(timeout=120)
            outcome = holder["r"].outcome
            starts = [e for e in read_log(folder / "calls.jsonl") if e["event"] == "start"]
            results["node_lost"] = {
                "images": len(outcome.images), "victim": victim.node_id,
                "nodes": sorted({e["node"] for e in starts}),
                "restarts": max(i.restarts for infos in outcome.replicas.values() for i in infos),
            }

            # a warm cluster: three resident 16 GB replicas, one per card, found warm by two runs
            from cluster.entrypoints.warm import bring_down, bring_up
            from models.scorers import load_scoring

            folder = base / "warm"
            folder.mkdir()
            registry = scripted_registry(folder, {"mid": {"gpus": 0.5, "gpu_memory_gb": 16, "script": {"latency": 0.3}}})
            up = bring_up(registry, ["mid"], load_scoring(), "none", quick_limits(), replicas=3)
            runs = []
            for name in ("w1", "w2"):
                request = make_request(registry, folder, folder_name=str(folder / name), models="mid", image_count=3,
                                       max_parallel=3)
                run_generation(request, registry, quick_limits(), resident=True)
                report = read_json(folder / name / "metadata/generation-report.json")
                runs.append({"warm": report["models"]["mid"]["warm"],
                             "nodes": [r["node_id"] for r in report["models"]["mid"]["replicas"]],
                             "images": report["generation_summary"]["successful_generations"]})
            results["warm"] = {"replicas": up.models["mid"]["replicas"], "runs": runs, "released": len(bring_down())}
    finally:
        ray.shutdown()
        cluster.shutdown()
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
