"""The GPU check: FLUX.1-schnell's real architecture (random weights) at 1024x1024, 4 steps, on
the card it runs on, measured beside the plain diffusers loop a user would write.

    python3 scripts/gpu_check.py --out DIR [--budget SECONDS]    # on a CUDA machine
    python3 scripts/gpu_check.py --tiny --out DIR                 # the same code at tiny size, on CPU

It runs the product's Ray-free classes (the generator, the scorer), because Ray does not travel
to the GPU machines (scripts/gpu_check.sh prepares what does). Prints JSON (and writes it with a
markdown table under --out). Every figure is a measurement or "not measured: <reason>"; the check
stops cleanly when its time budget is spent, marking what it did not reach.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "a lighthouse on a cliff at dusk, oil painting"


def not_measured(reason: str) -> str:
    return f"not measured: {reason}"


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def spent(self, need: float = 0.0) -> bool:
        return self.left() < need


class Check:
    def __init__(self, tiny: bool, budget: Budget):
        import torch

        self.torch = torch
        self.tiny = tiny
        self.budget = budget
        self.cuda = torch.cuda.is_available() and not tiny
        self.device = "cuda" if self.cuda else "cpu"
        self.size = 64 if tiny else 1024
        self.steps = 2 if tiny else 4
        self.model_id = "tiny-flux" if tiny else "flux-schnell-arch"
        from models.registry import load_registry

        self.spec = load_registry().get(self.model_id).model_copy(
            update={"width": self.size, "height": self.size, "steps": self.steps})

    # --- measuring ------------------------------------------------------------------------

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gb(self):
        if not self.cuda:
            return not_measured("no CUDA memory counters on the CPU")
        return round(self.torch.cuda.max_memory_allocated() / 2**30, 2)

    def free(self) -> None:
        """What the caller has dropped its references to leaves the card (hooks make cycles: collect)."""
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def timed(self, fn) -> float:
        self.sync()
        started = time.perf_counter()
        fn()
        self.sync()
        return round(time.perf_counter() - started, 3)

    def matmul_tflops(self):
        torch = self.torch
        n = 8192 if self.cuda else 512
        dtype = torch.bfloat16 if self.cuda else torch.float32
        a = torch.randn(n, n, device=self.device, dtype=dtype)
        b = torch.randn(n, n, device=self.device, dtype=dtype)
        for _ in range(3):
            a @ b
        runs = 10
        seconds = self.timed(lambda: [a @ b for _ in range(runs)])
        return round(2 * n**3 * runs / seconds / 1e12, 1)

    def flops_per_image(self) -> float:
        """FLUX.1's transformer at this size: its linear layers over every token, plus attention."""
        from cluster.memory.architectures import load_architecture

        arch = load_architecture("flux1-schnell")
        config = arch.components["transformer"].config
        params = arch.sizes["transformer"].params
        tokens = (self.size // 16) ** 2 + int(self.spec.call_args.get("max_sequence_length", 512))
        width = config["num_attention_heads"] * config["attention_head_dim"]
        layers = config["num_layers"] + config["num_single_layers"]
        return self.steps * (2 * params * tokens + 4 * tokens**2 * width * layers)

    # --- what is measured -------------------------------------------------------------

    def baseline(self) -> dict:
        """The plain loop: one pipeline, resident, a PNG per image, nothing else."""
        torch = self.torch
        self.reset_peak()
        started = time.perf_counter()
        pipe = self.plain_pipeline()
        self.sync()
        row = {"load_s": round(time.perf_counter() - started, 2)}

        def one(batch: int) -> None:
            images = pipe(prompt=[PROMPT] * batch, height=self.size, width=self.size, num_inference_steps=self.steps,
                          guidance_scale=0.0, generator=[torch.Generator("cpu").manual_seed(i) for i in range(batch)],
                          max_sequence_length=int(self.spec.call_args.get("max_sequence_length", 512))).images
            for image in images:
                image.save(io.BytesIO(), format="PNG")

        row["first_image_s"] = self.timed(lambda: one(1))
        row.update(self.steady(one))
        row["peak_gpu_gb"] = self.peak_gb()
        return row  # the pipeline goes with this frame; the caller frees the card

    def plain_pipeline(self):
        torch = self.torch
        if self.tiny:
            import diffusers

            from cluster import env
            from models.tiny import tiny_pipeline_dir

            return diffusers.FluxPipeline.from_pretrained(tiny_pipeline_dir("tiny-flux", env.cache_dir())).to(self.device)
        from cluster.memory.architectures import load_architecture
        from models.real_size import build_arch_pipeline

        pipe = build_arch_pipeline(load_architecture("flux1-schnell"), self.device, torch.bfloat16, torch)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def steady(self, one) -> dict:
        out = {}
        for batch, runs in ((1, 3), (4, 1)):
            if self.budget.spent(30):
                out[f"s_per_image_batch{batch}"] = not_measured("time budget spent")
                continue
            seconds = [self.timed(lambda: one(batch)) / batch for _ in range(runs)]
            out[f"s_per_image_batch{batch}"] = round(min(seconds), 3)
        return out

    def product(self, label: str, plan=None, speed=None) -> dict:
        """The product's generator (actors.diffusers_generator), as a replica holds it."""
        from actors.diffusers_generator import DiffusersGenerator
        from cluster import env
        from cluster.errors import ImageGenError
        from cluster.memory.planner import MemoryPlan
        from cluster.work import ImageTask

        spec = self.spec if speed is None else self.spec.model_copy(update={"speedups": speed})
        self.reset_peak()
        started = time.perf_counter()
        try:
            generator = DiffusersGenerator(spec, env.cache_dir(), label, memory_plan=plan or MemoryPlan("resident"))
        except ImageGenError as exc:
            return {"label": label, "error": not_measured(f"{exc.code}: {exc.message}")}
        self.sync()
        row = {"label": label, "load_s": round(time.perf_counter() - started, 2),
               "speed": generator.speed.as_dict(), "plan": generator.memory_plan.label}

        def one(batch: int) -> None:
            generator.generate([ImageTask(i, spec.id, PROMPT, i, self.size, self.size, self.steps, 0.0)
                                for i in range(batch)])

        row["first_image_s"] = self.timed(lambda: one(1))
        row.update(self.steady(one))
        row["peak_gpu_gb"] = self.peak_gb()
        if plan is not None and self.cuda:
            row["planned_gb"] = plan.gpu_gb
        self.generator = generator
        return row

    def clip(self) -> dict:
        """CLIP ViT-L/14 scoring throughput (random weights): one image per call against batches."""
        from PIL import Image

        from actors.clip_scorer import ClipScorer, ScoreItem
        from cluster import env
        from models.scorers import ScorerSpec

        spec = ScorerSpec(id="vit-l-14-random", architecture="builtin:tiny-clip" if self.tiny else "ViT-L-14",
                          pretrained=None, weights="random", batch_size=32)
        scorer = ClipScorer(spec, env.cache_dir())
        buffer = io.BytesIO()
        Image.new("RGB", (self.size, self.size), (120, 90, 60)).save(buffer, format="PNG")
        items = [ScoreItem(buffer.getvalue(), f"{PROMPT} {i}", self.size, self.size) for i in range(32)]
        scorer.score(items[:2])  # first call: kernels, caches
        row = {}
        for batch in (1, 8, 32):
            if self.budget.spent(10):
                row[f"images_per_s_batch{batch}"] = not_measured("time budget spent")
                continue
            chunks = [items[i:i + batch] for i in range(0, 32, batch)]
            seconds = self.timed(lambda: [scorer.score(c) for c in chunks])
            row[f"images_per_s_batch{batch}"] = round(32 / seconds, 1)
        self.scorer = scorer
        return row


def run(tiny: bool, budget_s: float) -> dict:
    import torch

    budget = Budget(budget_s)
    check = Check(tiny, budget)
    result: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "tiny": tiny,
                    "machine": {"device": torch.cuda.get_device_name() if check.cuda else f"CPU ({platform.processor() or platform.machine()})",
                                "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
                                if check.cuda else not_measured("no GPU"),
                                "python": platform.python_version(), "torch": torch.__version__,
                                "diffusers": __import__("diffusers").__version__},
                    "model": check.model_id, "size": check.size, "steps": check.steps}
    if not tiny and not check.cuda:
        result["error"] = "no CUDA device: run with --tiny on a CPU"
        return result
    result["matmul_tflops"] = check.matmul_tflops()
    if tiny:  # FLUX.1's floor says nothing about a model a million times smaller
        result["flops_per_image"] = result["floor_s_per_image"] = not_measured("the tiny model is not FLUX-sized")
    else:
        flops = check.flops_per_image()
        result["flops_per_image"] = flops
        result["floor_s_per_image"] = round(flops / (result["matmul_tflops"] * 1e12), 3)
    rows = {}
    rows["plain diffusers loop"] = check.baseline()
    check.free()
    rows["product, default options"] = check.product("product, default options")
    from cluster.memory.planner import MemoryPlan
    from models.registry import SpeedOptions

    off = SpeedOptions(compile="off", quantize="none", attention_backend="auto", cache="none")
    # fp8 where the card has float8 units; int8 elsewhere (and on the CPU, where --tiny runs it)
    kind = "fp8" if check.cuda and torch.cuda.get_device_capability() >= (8, 9) else "int8"
    variants = [
        ("compile only", None, off.model_copy(update={"compile": "on"})),
        (f"quantize {kind} only", None, off.model_copy(update={"quantize": kind})),
        ("plan fp8-storage", MemoryPlan("fp8-storage", fp8=True), off),
        ("plan model-offload", MemoryPlan("model-offload"), off),
        ("plan group-offload", MemoryPlan("group-offload"), off),
        ("plan resident + vae-tiling", MemoryPlan("resident", vae="tiling"), off),
    ]
    clip_row = None
    for label, plan, speed in variants:
        if budget.spent(60 if not tiny else 5):
            rows[label] = {"label": label, "error": not_measured("time budget spent")}
            continue
        if vars(check).pop("generator", None) is not None:
            check.free()
        if label.startswith("plan") and plan is not None and not tiny:
            from cluster.memory.sizes import architecture_sizes
            from cluster.memory.planner import Need, footprint

            need = Need(card_gb=result["machine"]["gpu_memory_gb"], host_gb=None, batch=1, width=check.size,
                        height=check.size)
            plan = MemoryPlan(plan.name, plan.fp8, plan.vae, *footprint(architecture_sizes("flux1-schnell"),
                                                                        plan.name, plan.fp8, plan.vae, need))
        rows[label] = check.product(label, plan, speed)
        if label == "plan fp8-storage" and not budget.spent(20):
            # FLUX (fp8) and the CLIP scorer resident on one card, as a one-GPU replica and scorer share it
            clip_row = check.clip()
            rows[label]["with_clip_peak_gpu_gb"] = check.peak_gb()
            del check.scorer  # the later rows measure their plan alone
            check.free()
    result["rows"] = rows
    result["sequential-offload"] = not_measured("one image takes minutes at 1024x1024; outside the check's budget")
    result["clip_vit_l14"] = clip_row or {"error": not_measured("time budget spent")}
    for row in rows.values():
        steady, floor = row.get("s_per_image_batch1"), result["floor_s_per_image"]
        if isinstance(steady, float) and isinstance(floor, float):
            row["ratio_to_floor"] = round(steady / floor, 2)
        elif "error" not in row:
            row["ratio_to_floor"] = not_measured("no FLOP floor for this model" if tiny else "no steady time")
    result["seconds"] = round(budget_s - budget.left(), 1)
    return result


def markdown(result: dict) -> str:
    machine = result["machine"]
    lines = [f"FLUX.1-schnell architecture ({result['model']}), {result['size']}x{result['size']}, {result['steps']} steps, "
             f"on {machine['device']} ({machine['gpu_memory_gb']} GB), {result['date']}, torch {machine['torch']}, "
             f"diffusers {machine['diffusers']}. Matmul {result.get('matmul_tflops')} TFLOP/s; FLOP floor "
             f"{result.get('floor_s_per_image')} s/image.", "",
             "| run | load s | first image s | s/image (batch 1) | s/image (batch 4) | x floor | peak GB | planned GB |",
             "|---|---|---|---|---|---|---|---|"]
    for label, row in result.get("rows", {}).items():
        if "error" in row:
            lines.append(f"| {label} | {row['error']} | | | | | | |")
            continue
        lines.append(f"| {label} | {row.get('load_s')} | {row.get('first_image_s')} | {row.get('s_per_image_batch1')} | "
                     f"{row.get('s_per_image_batch4')} | {row.get('ratio_to_floor', '')} | {row.get('peak_gpu_gb')} | "
                     f"{row.get('planned_gb', '')} |")
    clip = result.get("clip_vit_l14", {})
    lines += ["", "CLIP ViT-L/14 scoring, images/s: " + ", ".join(f"{k}: {v}" for k, v in clip.items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny-flux and tiny-clip on the CPU (the test suite's run)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds the check may take (default 420)")
    parser.add_argument("--out", default=None, help="folder for gpu_check.json and gpu_check.md")
    args = parser.parse_args(argv)
    result = run(args.tiny, args.budget)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(text + "\n")
        (out / "gpu_check.md").write_text(markdown(result))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
