#!/usr/bin/env python
"""LoRA adapters on a warm replica: what loading one costs, and what switching costs per call.

One resident pipeline (the Ray-free generator a replica runs), two adapters:
1. the first call with each adapter loads it (read, hash-checked, injected): `adapter load`;
2. then calls alternate between them (A, B, A, ...): each sets the other adapter and its scale
   (eager: set_adapters; compiled: a hot-swap into the compiled slots), with nothing reloaded:
   `switch`, against the time of one image at the same size (the goal: a switch under 5% of it).

    python scripts/bench_adapters.py                          # tiny-flux, tiny-style / tiny-grain, CPU
    python scripts/bench_adapters.py --compile on             # compiled: hot-swap
    python scripts/bench_adapters.py --model flux-schnell-arch --size 1024 --rank 16   # a CUDA GPU

For a real-size model the two adapters are random rank-`--rank` LoRAs on the attention layers of
its denoiser, written to a temporary adapters.yaml (family flux1) the replica reads through
KAMUI_ADAPTERS_CONFIG. Prints one JSON line of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-flux")
    parser.add_argument("--size", type=int, default=None, help="image side (default: the model's)")
    parser.add_argument("--switches", type=int, default=10)
    parser.add_argument("--compile", default="off", choices=("off", "on"))
    parser.add_argument("--rank", type=int, default=16, help="rank of the random adapters of a real-size model")
    args = parser.parse_args()

    from cluster import env
    from models.registry import SpeedOptions, load_registry

    spec = load_registry().get(args.model)
    tiny = spec.family == "tiny-flux"
    work = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    if not tiny:
        write_config(work, spec.family, args.rank)
        os.environ["KAMUI_ADAPTERS_CONFIG"] = str(work / "adapters.yaml")
    spec = spec.model_copy(update={"speedups": SpeedOptions(compile=args.compile, quantize="none")})

    from actors.core.diffusers_generator import DiffusersGenerator

    generator = DiffusersGenerator(spec, env.cache_dir(), "bench")
    if not tiny:
        for name, seed in (("style-a", 1), ("style-b", 2)):
            write_lora(generator.pipe.transformer, work / f"{name}.safetensors", args.rank, seed)
    names = ("tiny-style", "tiny-grain") if tiny else ("style-a", "style-b")
    size = args.size or spec.width

    base = [timed(generator, task(spec, size, "")) for _ in range(3)]
    first = {name: timed(generator, task(spec, size, f"{name}:1")) for name in names}
    switches = [timed(generator, task(spec, size, f"{names[i % 2]}:1")) for i in range(args.switches)]
    image_s = statistics.median(seconds for seconds, _ in base)
    switch_s = statistics.median(r.extra["adapter_switch_seconds"] for _, r in switches)
    figures = {
        "model": spec.id, "device": generator.device_label, "size": size, "compile": args.compile,
        "hotswap_slots": generator.adapters.stats()["hotswap_slots"],
        "model_load_s": round(generator.load_seconds, 3),
        "image_s": round(image_s, 4),
        "adapter_load_s": {n: round(r.extra["adapter_load_seconds"], 4) for n, (_, r) in first.items()},
        "switch_s_median": round(switch_s, 5),
        "switch_s_max": round(max(r.extra["adapter_switch_seconds"] for _, r in switches), 5),
        "switch_share_of_image": round(switch_s / image_s, 4),
        "adapter_loads": generator.adapters.stats()["loads"],  # 2: switching reloaded nothing
    }
    print(json.dumps(figures))


def task(spec, size: int, adapters: str):
    from cluster import env
    from cluster.work import ImageTask
    from models.adapter_files import resolve
    from models.adapters import load_adapters, parse_adapters

    registry = load_adapters()
    uses = resolve(parse_adapters(adapters, registry), registry, env.cache_dir())
    return ImageTask(0, spec.id, "a lighthouse at dusk", 7, size, size, spec.steps, spec.guidance, adapters=uses)


def timed(generator, one_task):
    started = time.perf_counter()
    (result,) = generator.generate([one_task])
    return time.perf_counter() - started, result


def write_config(folder: Path, family: str, rank: int) -> None:
    adapters = "".join(f"  {name}: {{source: {folder / name}.safetensors, family: {family}}}\n"
                       for name in ("style-a", "style-b"))
    (folder / "adapters.yaml").write_text(
        f"families:\n  {family}: {{budget_gb: 2.0, hotswap_rank: {rank}, hotswap_slots: 2}}\nadapters:\n{adapters}",
        encoding="utf-8")


def write_lora(transformer, path: Path, rank: int, seed: int) -> None:
    """A random LoRA of `rank` on the attention projections of `transformer`, in bf16."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(ATTENTION):
            a = torch.randn(rank, module.in_features, generator=generator) / module.in_features ** 0.5
            b = torch.randn(module.out_features, rank, generator=generator) * 0.01
            state[f"transformer.{name}.lora_A.weight"] = a.to(torch.bfloat16)
            state[f"transformer.{name}.lora_B.weight"] = b.to(torch.bfloat16)
    save_file(state, str(path))


if __name__ == "__main__":
    main()
