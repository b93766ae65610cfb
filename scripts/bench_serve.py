"""Throughput of `multi-image serve` on tiny-flux: images per second with 1, 4 and 16 concurrent
clients (the real `openai` client), against the same requests sent one after another, in one run.

    .venv/bin/python scripts/bench_serve.py [--requests 32] [--size 256]

Concurrent requests for one model and size share the warm replica's pipeline calls
(actors/coalescing.py), which is where more clients get more images per second.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KEY = "sk-bench-0123456789abcdef"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32, help="requests per round (default 32)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    args = parser.parse_args()

    import ray
    from openai import OpenAI

    from cluster.entrypoints.api.app import ServerConfig, digest
    from cluster.entrypoints.api.server import deploy, undeploy
    from cluster.planning.limits import load_limits
    from cluster.engine.ray_runtime import NAMESPACE
    from cluster.entrypoints.warm import bring_down, bring_up
    from models.registry import load_registry
    from models.scorers import load_scoring

    ray.init(address="local", num_cpus=8, include_dashboard=False, namespace=NAMESPACE, logging_level=logging.ERROR,
             log_to_driver=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = tempfile.mkdtemp(prefix="bench-serve-")
    registry = load_registry()
    bring_up(registry, ["tiny-flux"], load_scoring(), "none", load_limits())
    deployment = deploy(ServerConfig(data_dir=data, key_digests=(digest(KEY),), max_queue=64, scorer="none"),
                        "127.0.0.1", port)
    client = OpenAI(base_url=f"{deployment.url}/v1", api_key=KEY, max_retries=0, timeout=300)
    size = f"{args.size}x{args.size}"

    def one(n: int) -> None:
        client.images.generate(model="tiny-flux", prompt=f"a lighthouse {n}", size=size)

    one(-1)  # warm: the replica loaded, the first call's kernels

    def round_of(clients: int) -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(one, range(args.requests)))  # list: a failed request raises here
        return args.requests / (time.perf_counter() - started)

    sequential = round_of(1)
    rows = [(clients, round_of(clients)) for clients in (4, 16)]
    print(f"tiny-flux {size}, {args.requests} requests per round, one warm replica, this machine's CPUs")
    print(f"{'clients':>8} {'images/s':>10} {'x sequential':>13}")
    print(f"{1:>8} {sequential:>10.2f} {1.0:>13.2f}")
    for clients, rate in rows:
        print(f"{clients:>8} {rate:>10.2f} {rate / sequential:>13.2f}")
    undeploy(deployment)
    bring_down()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
