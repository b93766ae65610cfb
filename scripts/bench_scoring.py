#!/usr/bin/env python
"""Batched scoring vs one image per call, at the real ViT-L/14 architecture (random weights:
speed does not depend on the weights' values).

Both sides run the same `ClipScorer.score` the actor runs (decode, preprocess, vision tower,
cached text embedding, technical and artifact metrics); the only difference is how many
images go into one call. Prints images/s of each and their ratio, measured in one run.

    python scripts/bench_scoring.py [--images 16] [--architecture ViT-L-14] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--architecture", default="ViT-L-14")
    parser.add_argument("--size", type=int, default=512, help="side of the generated test images")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from actors.core.clip_scorer import ClipScorer, ScoreItem
    from cluster.output.png import encode_png
    from cluster.work import ImageTask
    from models.scorers import ScorerSpec

    spec = ScorerSpec(id="bench", architecture=args.architecture, pretrained=None, weights="random",
                      batch_size=args.images)
    scorer = ClipScorer(spec, Path(tempfile.mkdtemp()))
    rng = np.random.default_rng(0)
    items = []
    for i in range(args.images):
        task = ImageTask(i, "bench", "a lighthouse at dusk", i, args.size, args.size, 1, None)
        pixels = rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)
        items.append(ScoreItem(encode_png(Image.fromarray(pixels), task), task.prompt, args.size, args.size))
    scorer.score(items[:2])  # warm-up: kernels, allocator, the prompt's text embedding

    def best_of(fn) -> float:
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return min(times)

    batched = best_of(lambda: scorer.score(items))
    single = best_of(lambda: [scorer.score([item]) for item in items])
    device = scorer.device + (f" ({torch.cuda.get_device_name()})" if scorer.device == "cuda" else
                              f" ({torch.get_num_threads()} threads)")
    print(f"{args.architecture}, random weights, {args.images} images of {args.size}px on {device}")
    print(f"one call per image : {args.images / single:8.2f} images/s ({single:.2f}s)")
    print(f"one batched call   : {args.images / batched:8.2f} images/s ({batched:.2f}s)")
    print(f"batched / single throughput ratio: {single / batched:.2f}x")


if __name__ == "__main__":
    main()
