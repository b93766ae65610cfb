"""The GPU check: FLUX.1-schnell's real architecture (random weights) at 1024x1024, 4 steps, on
the card it runs on, measured beside the plain diffusers loop a user would write.

    python3 scripts/gpu_check.py --out DIR [--budget SECONDS]    # on a CUDA machine
    python3 scripts/gpu_check.py --tiny --out DIR                 # the same code at tiny size, on CPU

It runs the product's Ray-free classes (the generator, the scorer), because Ray does not travel
to the GPU machines (scripts/gpu_check.sh prepares what does). Every figure is a measurement or
"not measured: <reason>". A lent machine may be taken away mid-run, so the result is written
(gpu_check.json, gpu_check.md under --out) and printed after every row; each row catches whatever
it raises and records it, and the others go on. Cheap rows first: the planner's own choice for
this card, then each memory plan (the memory truth), then the speed rows that compile. The check
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
import traceback
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
GIB = 2**30


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


class Recorder:
    """The result so far, written and printed whole after every row."""

    def __init__(self, result: dict, out: Path | None):
        self.result = result
        self.out = out
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)

    def row(self, label: str, row: dict) -> None:
        self.result.setdefault("rows", {})[label] = row
        self.flush()
        print(f"ROW {label}: {json.dumps(row, default=str)}", flush=True)

    def flush(self) -> None:
        if self.out is None:
            return
        text = json.dumps(self.result, indent=2, default=str)
        partial = self.out / "gpu_check.json.partial"
        partial.write_text(text + "\n")
        partial.replace(self.out / "gpu_check.json")  # never a half-written file
        (self.out / "gpu_check.md").write_text(markdown(self.result))


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
        self.held: list = []  # what the current row keeps alive (dropped before the next row)

    # --- measuring ------------------------------------------------------------------------

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def memory(self) -> dict:
        """What the card holds: peak allocated and reserved since the last reset, free now (GiB)."""
        if not self.cuda:
            return {"peak_gpu_gb": not_measured("no CUDA memory counters on the CPU")}
        cuda = self.torch.cuda
        free, total = cuda.mem_get_info()
        return {"peak_gpu_gb": round(cuda.max_memory_allocated() / GIB, 2),
                "peak_reserved_gb": round(cuda.max_memory_reserved() / GIB, 2),
                "used_gb": round((total - free) / GIB, 2)}

    def free(self) -> None:
        """What the last row held leaves the card (hooks make cycles: collect)."""
        self.held.clear()
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def timed(self, fn) -> float:
        self.sync()
        started = time.perf_counter()
        fn()
        self.sync()
        return round(time.perf_counter() - started, 3)

    def matmul_tflops(self) -> dict:
        """The card's measured dense matmul rate: bf16 (fp32 on the CPU), and fp8 where it has
        float8 units (the floor of an fp8 row is over this one)."""
        torch = self.torch
        n = 8192 if self.cuda else 512
        dtype = torch.bfloat16 if self.cuda else torch.float32
        a = torch.randn(n, n, device=self.device, dtype=dtype)
        b = torch.randn(n, n, device=self.device, dtype=dtype)
        out = {"matmul_tflops": self.rate(lambda: a @ b, n)}
        if self.cuda and torch.cuda.get_device_capability() >= (8, 9):
            a8, b8 = a.to(torch.float8_e4m3fn), b.t().contiguous().t().to(torch.float8_e4m3fn)
            one = torch.ones((), device=self.device)
            out["fp8_matmul_tflops"] = self.rate(
                lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16), n)
        else:
            out["fp8_matmul_tflops"] = not_measured("no float8 matrix units here (CUDA 8.9+)")
        return out

    def rate(self, matmul, n: int) -> float:
        for _ in range(3):
            matmul()
        runs = 10
        seconds = self.timed(lambda: [matmul() for _ in range(runs)])
        return round(2 * n**3 * runs / seconds / 1e12, 1)

    def flops_per_image(self) -> float:
        """FLUX.1's transformer at this size, counted on the meta device per op (every Linear over
        the tokens it really sees, attention over image + text tokens) times the steps."""
        from actors.core.meta_count import transformer_flops
        from cluster.planning.memory.architectures import load_architecture

        text = int(self.spec.call_args.get("max_sequence_length", 512))
        return self.steps * transformer_flops(load_architecture("flux1-schnell"), self.size, self.size, text)

    # --- what is measured -------------------------------------------------------------

    def baseline(self) -> dict:
        """The plain loop: one pipeline, resident, a PNG per image, nothing else."""
        torch = self.torch
        started = time.perf_counter()
        pipe = self.plain_pipeline()
        self.held.append(pipe)
        self.sync()
        row = {"load_s": round(time.perf_counter() - started, 2)}
        self.reset_peak()  # the load's own spike is not what the model holds

        def one(batch: int) -> None:
            images = pipe(prompt=[PROMPT] * batch, height=self.size, width=self.size, num_inference_steps=self.steps,
                          guidance_scale=0.0, generator=[torch.Generator("cpu").manual_seed(i) for i in range(batch)],
                          max_sequence_length=int(self.spec.call_args.get("max_sequence_length", 512))).images
            for image in images:
                image.save(io.BytesIO(), format="PNG")

        row["first_image_s"] = self.timed(lambda: one(1))
        row.update(self.steady(one))
        row.update(self.memory())
        return row

    def plain_pipeline(self):
        torch = self.torch
        if self.tiny:
            import diffusers

            from cluster import env
            from models.tiny import tiny_pipeline_dir

            return diffusers.FluxPipeline.from_pretrained(tiny_pipeline_dir("tiny-flux", env.cache_dir())).to(self.device)
        from cluster.planning.memory.architectures import load_architecture
        from models.real_size import build_arch_pipeline

        pipe = build_arch_pipeline(load_architecture("flux1-schnell"), self.device, torch.bfloat16, torch)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def steady(self, one) -> dict:
        """Seconds per image at batch 1 and 4, each batch size run once untimed first (its own
        kernels, allocations and, compiled, its graphs)."""
        out = {}
        for batch, runs in ((1, 3), (4, 1)):
            if self.budget.spent(30 if not self.tiny else 2):
                out[f"s_per_image_batch{batch}"] = not_measured("time budget spent")
                continue
            one(batch)
            seconds = [self.timed(lambda: one(batch)) / batch for _ in range(runs)]
            out[f"s_per_image_batch{batch}"] = round(min(seconds), 3)
        return out

    def product(self, plan=None, speed=None) -> dict:
        """The product's generator (actors.core.diffusers_generator), as a replica holds it."""
        from actors.core.diffusers_generator import DiffusersGenerator
        from cluster import env
        from cluster.planning.memory.planner import MemoryPlan
        from cluster.work import ImageTask

        spec = self.spec if speed is None else self.spec.model_copy(update={"speedups": speed})
        self.reset_peak()
        started = time.perf_counter()
        generator = DiffusersGenerator(spec, env.cache_dir(), "gpu-check", memory_plan=plan or MemoryPlan("resident"))
        self.held.append(generator)
        self.sync()
        # the generator resets the peak after its load: this is what the loaded model holds
        row = {"load_s": round(time.perf_counter() - started, 2), "speed": generator.speed.as_dict(),
               "plan": generator.memory_plan.label, "after_load": self.memory()}

        def one(batch: int) -> None:
            generator.generate([ImageTask(i, spec.id, PROMPT, i, self.size, self.size, self.steps, 0.0)
                                for i in range(batch)])

        row["first_image_s"] = self.timed(lambda: one(1))
        row.update(self.steady(one))
        row.update(self.memory())
        if plan is not None and plan.gpu_gb:
            row["planned_gb"] = plan.gpu_gb
        return row

    def clip(self) -> dict:
        """CLIP ViT-L/14 scoring throughput (random weights): one image per call against batches."""
        from PIL import Image

        from actors.core.clip_scorer import ClipScorer, ScoreItem
        from cluster import env
        from models.scorers import ScorerSpec

        spec = ScorerSpec(id="vit-l-14-random", architecture="builtin:tiny-clip" if self.tiny else "ViT-L-14",
                          pretrained=None, weights="random", batch_size=32)
        scorer = ClipScorer(spec, env.cache_dir())
        self.held.append(scorer)
        buffer = io.BytesIO()
        Image.new("RGB", (self.size, self.size), (120, 90, 60)).save(buffer, format="PNG")
        items = [ScoreItem(buffer.getvalue(), f"{PROMPT} {i}", self.size, self.size) for i in range(32)]
        scorer.score(items[:2])  # first call: kernels, caches
        row = {}
        for batch in (1, 8, 32):
            if self.budget.spent(10 if not self.tiny else 1):
                row[f"images_per_s_batch{batch}"] = not_measured("time budget spent")
                continue
            chunks = [items[i:i + batch] for i in range(0, 32, batch)]
            seconds = self.timed(lambda: [scorer.score(c) for c in chunks])
            row[f"images_per_s_batch{batch}"] = round(32 / seconds, 1)
        return row

    def beside_clip(self) -> dict:
        """The planner's choice and the CLIP scorer on one card, as a one-GPU replica and the run's
        scorer share it: does the scorer still fit beside the plan's footprint?"""
        row = self.product(self.chosen())
        clip = self.clip()
        row["clip_images_per_s_batch32"] = clip.get("images_per_s_batch32")
        row["with_clip"] = self.memory()
        return row

    # --- the card's plans ---------------------------------------------------------------

    def need(self):
        from cluster.planning.memory.planner import Need

        card = self.torch.cuda.mem_get_info()[1] / GIB if self.cuda else 1024.0
        return Need(card_gb=round(card, 1), host_gb=host_gb(), batch=1, width=self.size, height=self.size,
                    cuda=self.cuda)

    def planned(self, name: str, fp8: bool, vae: str = "none"):
        """The plan `name` with this card's planned footprint (the tiny model has none to plan)."""
        from cluster.planning.memory.planner import MemoryPlan, footprint
        from cluster.planning.memory.sizes import architecture_sizes

        if self.tiny:
            return MemoryPlan(name, fp8, vae)
        gpu, host = footprint(architecture_sizes("flux1-schnell"), name, fp8, vae, self.need())
        return MemoryPlan(name, fp8, vae, gpu, host)

    def chosen(self):
        """The plan the planner picks for this card and host (what a replica here would run)."""
        from cluster.planning.memory.planner import MemoryPlan, choose
        from cluster.planning.memory.sizes import architecture_sizes

        if self.tiny:
            return MemoryPlan("resident", reason="the tiny model fits anywhere")
        choice = choose(architecture_sizes("flux1-schnell"), self.need())
        if choice.plan is None:
            raise RuntimeError(f"no plan fits this card: {choice.table()}")
        return choice.plan


def host_gb() -> float | None:
    try:
        import os

        return round(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GIB, 1)
    except (ValueError, OSError, AttributeError):
        return None


def failure(exc: BaseException) -> dict:
    """A row that raised: what, in a line, and where (the last frames)."""
    code = getattr(exc, "code", None)
    message = " ".join(str(exc).split())[:500]
    where = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
             for f in traceback.extract_tb(exc.__traceback__)[-4:]]
    return {"error": not_measured(f"{code or type(exc).__name__}: {message}"), "where": where}


def rows(check: Check, torch):
    """(label, function) of every row, cheapest and most telling first."""
    from models.registry import SpeedOptions

    off = SpeedOptions(compile="off", quantize="none", attention_backend="auto", cache="none")
    kind = "fp8" if check.cuda and torch.cuda.get_device_capability() >= (8, 9) else "int8"
    plans = [("plan fp8-storage", "fp8-storage", True, "none"), ("plan group-offload", "group-offload", False, "none"),
             ("plan group-offload + fp8", "group-offload", True, "none"),
             ("plan model-offload", "model-offload", False, "none"),
             ("plan resident + vae-tiling", "resident", False, "tiling")]
    out = [("planner's choice, default options", lambda: check.product(check.chosen()))]
    out += [(label, lambda n=name, f=fp8, v=vae: check.product(check.planned(n, f, v), off))
            for label, name, fp8, vae in plans]
    out += [("planner's choice beside the CLIP scorer", check.beside_clip),
            ("plain diffusers loop", check.baseline),
            ("product, default options", lambda: check.product()),
            (f"quantize {kind} only", lambda: check.product(None, off.model_copy(update={"quantize": kind}))),
            ("compile only", lambda: check.product(None, off.model_copy(update={"compile": "on"}))),
            ("CLIP ViT-L/14 scoring", check.clip)]
    return out


def run(tiny: bool, budget_s: float, out: Path | None = None) -> dict:
    import torch

    budget = Budget(budget_s)
    check = Check(tiny, budget)
    result: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "tiny": tiny,
                    "machine": {"device": torch.cuda.get_device_name() if check.cuda else f"CPU ({platform.processor() or platform.machine()})",
                                "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / GIB, 1)
                                if check.cuda else not_measured("no GPU"), "host_free_gb": host_gb(),
                                "python": platform.python_version(), "torch": torch.__version__,
                                "diffusers": __import__("diffusers").__version__},
                    "model": check.model_id, "size": check.size, "steps": check.steps, "rows": {}}
    recorder = Recorder(result, out)
    if not tiny and not check.cuda:
        result["error"] = "no CUDA device: run with --tiny on a CPU"
        recorder.flush()
        return result
    result.update(check.matmul_tflops())
    if tiny:  # FLUX.1's floor says nothing about a model a million times smaller
        result["flops_per_image"] = result["floor_s_per_image"] = not_measured("the tiny model is not FLUX-sized")
    else:
        result["flops_per_image"] = check.flops_per_image()
        result["floor_s_per_image"] = round(result["flops_per_image"] / (result["matmul_tflops"] * 1e12), 3)
        if isinstance(result["fp8_matmul_tflops"], float):
            result["fp8_floor_s_per_image"] = round(result["flops_per_image"] / (result["fp8_matmul_tflops"] * 1e12), 3)
    recorder.flush()
    for label, measure in rows(check, torch):
        check.free()
        if budget.spent(60 if not tiny else 2):
            recorder.row(label, {"error": not_measured("time budget spent")})
            continue
        try:
            row = measure()
        except Exception as exc:  # noqa: BLE001 - one row's failure (an OOM, a compiler error) must not lose the rest
            row = failure(exc)
            check.free()
        add_ratio(row, result, tiny)
        recorder.row(label, row)
    check.free()
    result["sequential-offload"] = not_measured("one image takes minutes at 1024x1024; outside the check's budget")
    result["seconds"] = round(budget_s - budget.left(), 1)
    recorder.flush()
    return result


def add_ratio(row: dict, result: dict, tiny: bool) -> None:
    """The row's steady time over the FLOP floor: over the fp8 matmul rate for a row computing in
    fp8 (torchao's quantize), the bf16 rate otherwise."""
    if "error" in row or "s_per_image_batch1" not in row:
        return
    fp8 = "fp8" in str(row.get("speed", {}).get("applied", {}).get("quantize", ""))
    floor = result.get("fp8_floor_s_per_image") if fp8 else result.get("floor_s_per_image")
    steady = row["s_per_image_batch1"]
    if isinstance(steady, float) and isinstance(floor, float):
        row["ratio_to_floor"] = round(steady / floor, 2)
        row["floor"] = "fp8 matmul rate" if fp8 else "bf16 matmul rate"
    else:
        row["ratio_to_floor"] = not_measured("no FLOP floor for this model" if tiny else "no steady time or floor")


def markdown(result: dict) -> str:
    machine = result["machine"]
    lines = [f"FLUX.1-schnell architecture ({result['model']}), {result['size']}x{result['size']}, {result['steps']} steps, "
             f"on {machine['device']} ({machine['gpu_memory_gb']} GiB), {result['date']}, torch {machine['torch']}, "
             f"diffusers {machine['diffusers']}. Matmul {result.get('matmul_tflops')} TFLOP/s bf16, "
             f"{result.get('fp8_matmul_tflops')} fp8; FLOP floor {result.get('floor_s_per_image')} s/image "
             f"({result.get('flops_per_image')} FLOP, counted per op on the meta device).", "",
             "| run | plan | load s | first image s | s/image (batch 1) | s/image (batch 4) | x floor | peak GiB "
             "| planned GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for label, row in result.get("rows", {}).items():
        if "error" in row:
            lines.append(f"| {label} | {row['error']} | | | | | | | |")
        elif "load_s" not in row:  # the scorer's row
            lines.append(f"| {label} | images/s: " + ", ".join(f"{k}: {v}" for k, v in row.items()) + " | | | | | | | |")
        else:
            lines.append(f"| {label} | {row.get('plan', '')} | {row.get('load_s')} | {row.get('first_image_s')} | "
                         f"{row.get('s_per_image_batch1')} | {row.get('s_per_image_batch4')} | "
                         f"{row.get('ratio_to_floor', '')} | {row.get('peak_gpu_gb')} | {row.get('planned_gb', '')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny-flux and tiny-clip on the CPU (the test suite's run)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds the check may take (default 420)")
    parser.add_argument("--out", default=None, help="folder for gpu_check.json and gpu_check.md, written after every row")
    args = parser.parse_args(argv)
    result = run(args.tiny, args.budget, Path(args.out) if args.out else None)
    print(json.dumps(result, indent=2, default=str))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
