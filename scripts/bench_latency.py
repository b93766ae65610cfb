#!/usr/bin/env python
"""What a warm run costs beyond its images, measured in one run on a warm cluster with tiny-flux.

1. `generate` as a user runs it (a `multi-image` process, timed from its start to its exit), one
   image at 64x64 and --image-count 8, on the direct path (the process joins the cluster as a Ray
   driver: `--address <the cluster>`) and through the warm cluster's front door (no --address).
   Fixed overhead = wall - the pipeline's own time (the replica's pipeline calls, as each image
   reports them), median of --runs.
2. The OpenAI API (`multi-image serve`, the real `openai` client): one `n=1` 64x64 request at a
   time, then --concurrent clients at once; latency p50/p95 beside the pipeline's own time, and
   the overhead (latency - pipeline) p50/p95.
3. Where the time goes: the run's stages (the `stage_times` event; the API's Server-Timing header),
   and, outside the run, the client process's start and imports, measured on their own.

    python scripts/bench_latency.py [--runs 5] [--requests 30] [--concurrent 16] [--only generate|api]

The cluster is this process's Ray instance with tiny-flux resident and the front door open, as
after `multi-image cluster up --models tiny-flux --scorer tiny-clip` (runs ask for --scorer
tiny-clip). Ray's own start is not in any figure: the cluster is warm before the first.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
KEY = "sk-bench-0123456789abcdef"
MODEL_ARGS = ["--models", "tiny-flux", "--width", "64", "--height", "64", "--scorer", "tiny-clip", "--seed", "7"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def timed_process(argv: list[str], env: dict, cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}... exited {done.returncode}:\n{done.stderr[-3000:]}")
    return wall, done.stdout


def one_generate(work: Path, env: dict, count: int, n: int, extra: list[str]) -> dict:
    """One `multi-image generate --json` process: its wall time, its pipeline's own time, its stages."""
    argv = [sys.executable, "-m", "cluster.entrypoints.cli", "generate", "--image-prompt",
            "a lighthouse at dusk, oil painting", "--folder-name", f"run-{n}", "--image-count", str(count),
            "--json", *MODEL_ARGS, *extra]
    wall, stdout = timed_process(argv, env, work)
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    pipeline = sum(e["seconds"] for e in events if e["event"] == "image_done")
    stages = next(e["seconds"] for e in events if e["event"] == "stage_times")
    path = events[-1]["path"]
    return {"wall": wall, "pipeline": pipeline, "overhead": wall - pipeline, "stages": stages, "path": path}


def start_costs(env: dict, work: Path, runs: int) -> dict[str, float]:
    """The client process before any run: Python itself, the CLI's imports, and Ray's (the direct path's)."""
    def median(code: str) -> float:
        return statistics.median(timed_process([sys.executable, "-c", code], env, work)[0] for _ in range(runs))

    bare = median("pass")
    cli = median("import cluster.entrypoints.cli, cluster.entrypoints.frontdoor.client")
    ray_import = median("import ray")
    return {"python start": bare, "CLI imports (client)": cli - bare, "import ray (direct only)": ray_import - bare}


def generate_rows(work: Path, gcs: str, runtime: str, runs: int) -> list[tuple[str, int, list[dict]]]:
    direct_env = {**os.environ, "KAMUI_RUNTIME_DIR": str(work / "no-front-door")}
    door_env = {**os.environ, "KAMUI_RUNTIME_DIR": runtime}
    rows = []
    for label, env, extra in (("direct", direct_env, ["--address", gcs]), ("front door", door_env, [])):
        for count in (1, 8):
            one_generate(work, env, count, -1, extra)  # first of its kind: caches, the embedding cache
            samples = [one_generate(work, env, count, n, extra) for n in range(runs)]
            expected = "direct" if label == "direct" else "front-door"
            assert all(s["path"] == expected for s in samples), [s["path"] for s in samples]
            rows.append((label, count, samples))
    return rows


def print_generate(rows, starts: dict[str, float]) -> None:
    print("\n## generate: fixed overhead per run (wall - pipeline's own time), median of runs")
    print(f"{'path':<11} {'images':>6} {'wall s':>8} {'pipeline s':>10} {'overhead s':>10}")
    for label, count, samples in rows:
        med = {k: statistics.median(s[k] for s in samples) for k in ("wall", "pipeline", "overhead")}
        print(f"{label:<11} {count:>6} {med['wall']:>8.3f} {med['pipeline']:>10.3f} {med['overhead']:>10.3f}")
    print("\n## generate, one image: where the overhead goes (median seconds)")
    for name, seconds in starts.items():
        print(f"  {name:<34} {seconds:7.3f}")
    for label, count, samples in rows:
        if count != 1:
            continue
        print(f"  -- {label}: the run's stages (inside the {'client' if label == 'direct' else 'front door'})")
        names = list(samples[0]["stages"])
        total = 0.0
        for name in names:
            seconds = statistics.median(s["stages"].get(name, 0.0) for s in samples)
            if name == "generate":
                pipeline = statistics.median(s["pipeline"] for s in samples)
                print(f"  {'generate (minus pipeline)':<34} {seconds - pipeline:7.3f}")
                total += seconds - pipeline
            else:
                print(f"  {name:<34} {seconds:7.3f}")
                total += seconds
        rest = statistics.median(s["overhead"] for s in samples) - total - starts["python start"] - \
            starts["CLI imports (client)"] - (starts["import ray (direct only)"] if label == "direct" else 0.0)
        print(f"  {'rest (parse, socket, print, exit)':<34} {rest:7.3f}")


def api_rounds(requests: int, concurrent: int) -> dict[str, list[tuple[float, dict[str, float]]]]:
    from openai import OpenAI

    from cluster.entrypoints.api.app import ServerConfig, digest
    from cluster.entrypoints.api.server import deploy, undeploy

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = tempfile.mkdtemp(prefix="bench-latency-serve-")
    deployment = deploy(ServerConfig(data_dir=data, key_digests=(digest(KEY),), max_queue=64, scorer="tiny-clip"),
                        "127.0.0.1", port)
    client = OpenAI(base_url=f"{deployment.url}/v1", api_key=KEY, max_retries=0, timeout=300)

    def one(n: int) -> tuple[float, dict[str, float]]:
        started = time.perf_counter()
        raw = client.images.with_raw_response.generate(model="tiny-flux", prompt=f"a lighthouse {n}", size="64x64",
                                                       response_format="b64_json")
        raw.parse()
        latency = time.perf_counter() - started
        timing = {}
        for part in raw.headers.get("server-timing", "").split(","):
            name, _, dur = part.strip().partition(";dur=")
            if dur:
                timing[name] = float(dur) / 1000
        return latency, timing

    for n in range(3):
        one(-1 - n)  # warm: the replica's first calls, the server's imports
    results = {"sequential": [one(n) for n in range(requests)]}
    with ThreadPoolExecutor(max_workers=concurrent) as clients:
        results[f"{concurrent} concurrent"] = list(clients.map(one, range(1000, 1000 + requests * 2)))
    undeploy(deployment)
    return results


def print_api(results) -> None:
    print("\n## API: one n=1 64x64 request (the openai client), seconds")
    print(f"{'round':<14} {'requests':>8} {'latency p50':>11} {'p95':>7} {'pipeline p50':>12} {'overhead p50':>12} {'p95':>7}")
    for name, samples in results.items():
        latency = [s[0] for s in samples]
        pipeline = [s[1].get("pipeline", 0.0) for s in samples]
        overhead = [lat - pipe for lat, pipe in zip(latency, pipeline)]
        print(f"{name:<14} {len(samples):>8} {pct(latency, .5):>11.4f} {pct(latency, .95):>7.4f} "
              f"{pct(pipeline, .5):>12.4f} {pct(overhead, .5):>12.4f} {pct(overhead, .95):>7.4f}")
    sequential = results["sequential"]
    print("\n## API, sequential: where a request's time goes (median seconds)")
    names = [name for name in sequential[0][1] if name != "pipeline"]
    inside = 0.0
    for name in names:
        seconds = statistics.median(s[1].get(name, 0.0) for s in sequential)
        if name == "generate":  # the pipeline's own calls are not overhead: shown apart
            pipeline = statistics.median(s[1].get("pipeline", 0.0) for s in sequential)
            print(f"  {'generate (minus pipeline)':<34} {seconds - pipeline:7.4f}")
            print(f"  {'(pipeline, not overhead)':<34} {pipeline:7.4f}")
        else:
            print(f"  {name:<34} {seconds:7.4f}")
        inside += seconds
    rest = statistics.median(s[0] for s in sequential) - inside
    print(f"  {'rest (HTTP, Serve, parse, encode)':<34} {rest:7.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="generate runs per row (default 5)")
    parser.add_argument("--requests", type=int, default=30, help="API requests per round (default 30)")
    parser.add_argument("--concurrent", type=int, default=16, help="concurrent API clients (default 16)")
    parser.add_argument("--only", choices=("generate", "api"), help="measure only the generate rows or only the API's")
    args = parser.parse_args()

    import ray

    from cluster.engine.ray_runtime import embedded_init_kwargs
    from cluster.entrypoints.frontdoor.actor import start_front_door
    from cluster.entrypoints.warm import bring_down, bring_up
    from cluster.planning.limits import load_limits
    from models.registry import load_registry
    from models.scorers import load_scoring

    work = Path(tempfile.mkdtemp(prefix="kamui-bench-latency-"))
    runtime = tempfile.mkdtemp(prefix="kbl", dir="/tmp")  # private (0700), short: a socket's path
    os.environ.update(KAMUI_HISTORY_DB=str(work / "history.sqlite"), KAMUI_RUNTIME_DIR=runtime,
                      PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", **{**embedded_init_kwargs(), "logging_level": logging.ERROR, "log_to_driver": False})
    try:
        bring_up(load_registry(), ["tiny-flux"], load_scoring(), "tiny-clip", load_limits())
        start_front_door()
        gcs = ray.get_runtime_context().gcs_address
        print(f"tiny-flux 64x64 (2 steps) resident, scorer tiny-clip, on this machine's {os.cpu_count()} CPUs; "
              f"{time.strftime('%Y-%m-%d')}, Python {sys.version.split()[0]}, Ray {ray.__version__}")
        if args.only != "api":
            starts = start_costs(dict(os.environ), work, args.runs)
            print_generate(generate_rows(work, gcs, runtime, args.runs), starts)
        if args.only != "generate":
            print_api(api_rounds(args.requests, args.concurrent))
    finally:
        bring_down()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
