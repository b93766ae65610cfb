#!/usr/bin/env python
"""Cold vs warm, and batch vs one generate at a time, measured in one run.

1. Wall time of a cold `generate` (the run starts its replica and loads the model) against a
   warm one (the replica is resident, as after `multi-image cluster up`), same model, same
   request. The Ray instance is up for both, so this is the load the warm cluster saves; a
   CLI invocation with an embedded instance pays Ray's own start (~8 s here) on top.
2. A batch's images/s against the same prompts run one cold `generate` at a time.

    python scripts/bench_warm.py [--model tiny-flux] [--prompts 6] [--images 2]

With real weights (e.g. --model flux-schnell on a GPU node with the weights cached) the
load is tens of seconds and the ratios grow accordingly.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-flux")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--images", type=int, default=2, help="images per prompt")
    parser.add_argument("--entries-at-once", type=int, default=2)
    args = parser.parse_args()

    import ray

    from cluster.entrypoints.batch import build_entries, run_batch
    from cluster.observability.events import Events
    from cluster.observability.history import History
    from cluster.planning.limits import load_limits
    from cluster.engine.ray_runtime import embedded_init_kwargs
    from cluster.planning.request import parse_request
    from cluster.pipeline.run import run_generation
    from cluster.entrypoints.warm import bring_down, bring_up
    from models.registry import load_registry
    from models.scorers import load_scoring

    work = Path(tempfile.mkdtemp(prefix="kamui-bench-warm-"))
    os.chdir(work)
    os.environ["KAMUI_HISTORY_DB"] = str(work / "history.sqlite")
    ray.init(address="local", **{**embedded_init_kwargs(), "logging_level": logging.ERROR})
    registry, limits = load_registry(), load_limits()

    def generate(folder: str, prompt: str, resident: bool) -> float:
        request = parse_request({"image_prompt": prompt, "folder_name": folder, "models": args.model,
                                 "image_count": str(args.images), "scorer": "none", "seed": "1"}, registry, cwd=work)
        started = time.perf_counter()
        result = run_generation(request, registry, limits, resident=resident, history=History(work / "h.sqlite"))
        assert result.exit_code == 0, result.outcome.error
        return time.perf_counter() - started

    prompts = [f"a lighthouse at dusk, variation {i}" for i in range(args.prompts)]
    generate("warmup", prompts[0], resident=False)  # first-ever use: builds caches, imports

    cold = min(generate(f"cold-{i}", prompts[0], resident=False) for i in range(2))
    bring_up(registry, [args.model], load_scoring(), "none", limits)
    warm = min(generate(f"warm-{i}", prompts[0], resident=True) for i in range(2))
    bring_down()
    print(f"{args.model}, {args.images} image(s) per run, Ray already running")
    print(f"cold generate (start replica + load + generate): {cold:6.2f}s")
    print(f"warm generate (resident replica)              : {warm:6.2f}s")
    print(f"cold / warm wall-time ratio: {cold / warm:.1f}x")

    started = time.perf_counter()
    for i, prompt in enumerate(prompts):
        generate(f"one-{i}", prompt, resident=False)
    one_by_one = time.perf_counter() - started

    manifest = work / "batch.jsonl"
    import json

    manifest.write_text("\n".join(json.dumps({"id": f"p{i}", "image-prompt": p, "models": args.model,
                                              "image-count": args.images, "scorer": "none", "seed": 1})
                                  for i, p in enumerate(prompts)))
    entries = build_entries(manifest, registry, {}, cwd=work)
    started = time.perf_counter()
    results = run_batch(entries, registry, limits, events=Events(), entries_at_once=args.entries_at_once)
    batch = time.perf_counter() - started
    bring_down()
    assert all(r.ok for r in results)
    images = args.prompts * args.images
    print(f"\n{args.prompts} prompts x {args.images} images = {images} images")
    print(f"one cold generate at a time: {images / one_by_one:6.2f} images/s ({one_by_one:.1f}s)")
    print(f"one batch                  : {images / batch:6.2f} images/s ({batch:.1f}s)")
    print(f"batch / one-at-a-time throughput ratio: {one_by_one / batch:.1f}x")
    ray.shutdown()


if __name__ == "__main__":
    main()
