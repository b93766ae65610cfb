"""Every combination a card could get, run on the CPU through the product's own load path
(`DiffusersGenerator`: memory plan, then speed options, then warm-up): {resident, fp8-storage,
group-offload, group-offload + fp8} x {compile on, off} x {step cache on, off}. Each either makes
its images or is refused before anything loads, with an IMG code naming the conflict; never an
error at load or mid-run. A compiled warm replica then serves more distinct (batch, size) shapes
than Dynamo's default recompile limit allows."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cluster.errors import ImageGenError
from cluster.planning.memory.planner import MemoryPlan
from models.registry import SpeedOptions

PLANS = {
    "resident": MemoryPlan("resident", batch=2),
    "fp8-storage": MemoryPlan("fp8-storage", fp8=True, batch=2),
    "group-offload": MemoryPlan("group-offload", batch=2),
    "group-offload + fp8": MemoryPlan("group-offload", fp8=True, batch=2),
}
# what each plan says when compile is asked for explicitly: (code, words of the message)
COMPILE_REFUSED = {
    "fp8-storage": ("IMG_018", "layerwise casting"),
    "group-offload": ("IMG_018", "moves the denoiser's blocks between host and card"),
    "group-offload + fp8": ("IMG_018", "moves the denoiser's blocks between host and card"),
}
COMBINATIONS = list(itertools.product(PLANS, ("on", "off"), ("first-block", "none")))
# the compiled ones cost an inductor compile each on the CPU: the suite keeps one, CI's slow run the other
SLOW = {("resident", "on", "first-block")}


def spec_with(registry, compile_option: str, cache: str):
    return registry.get("tiny-flux").model_copy(update={"speedups": SpeedOptions(
        compile=compile_option, cache=cache, cache_threshold=0.5, quantize="none", attention_backend="auto")})


def tasks(batch: int, size: int, seed: int = 0):
    from cluster.work import ImageTask

    return [ImageTask(i, "tiny-flux", "a lighthouse at dusk", seed + i, size, size, 2, 0.0) for i in range(batch)]


def assert_real_images(images, batch: int, size: int):
    from cluster.output.png import decode

    assert len(images) == batch
    for image in images:
        pixels = np.asarray(decode(image.png))
        assert image.nonfinite_fraction == 0.0 and pixels.shape[:2] == (size, size) and pixels.std() > 0


@pytest.fixture
def no_loading(monkeypatch):
    """Loading weights fails the test: a refusal must come before it."""
    import actors.core.diffusers_generator as generator_module

    def loaded(*args, **kwargs):
        raise AssertionError("weights were loaded before the combination was refused")

    monkeypatch.setattr(generator_module, "load_planned", loaded)


@pytest.mark.parametrize("plan, compile_option, cache", [
    pytest.param(*c, marks=pytest.mark.slow) if c in SLOW else c for c in COMBINATIONS])
def test_each_plan_and_speed_combination_makes_images_or_is_refused_before_loading(
        tiny_models, registry, request, plan, compile_option, cache):
    from actors.core.diffusers_generator import DiffusersGenerator
    from cluster import env

    spec = spec_with(registry, compile_option, cache)
    if compile_option == "on" and plan in COMPILE_REFUSED:
        request.getfixturevalue("no_loading")
        code, words = COMPILE_REFUSED[plan]
        with pytest.raises(ImageGenError) as info:
            DiffusersGenerator(spec, env.cache_dir(), "combination", memory_plan=PLANS[plan])
        assert info.value.code == code and words in info.value.message and "compile: on" in info.value.message
        return
    replica = DiffusersGenerator(spec, env.cache_dir(), "combination", memory_plan=PLANS[plan])
    applied = replica.speed.applied
    assert ("compile" in applied) == (compile_option == "on")
    assert ("cache" in applied) == (cache == "first-block")
    if compile_option == "on":
        assert replica._compiled.seen == {(1, 64, 64), (2, 64, 64)}  # warmed up: batch 1 and the plan's batch
    for batch, size in ((1, 64), (2, 32)):
        assert_real_images(replica.generate(tasks(batch, size)), batch, size)


def test_compile_under_auto_is_skipped_with_its_reason_under_plans_it_cannot_trace(tiny_models, registry):
    from actors.core.diffusers_generator import DiffusersGenerator
    from cluster import env

    spec = registry.get("tiny-flux")  # compile: auto
    replica = DiffusersGenerator(spec, env.cache_dir(), "auto", memory_plan=PLANS["fp8-storage"])
    assert "compile" not in replica.speed.applied and "layerwise casting" in replica.speed.skipped["compile"]
    assert_real_images(replica.generate(tasks(1, 64)), 1, 64)


def test_the_driver_refuses_the_conflict_when_it_plans_the_replica(registry):
    """Refused at planning, before any actor exists: a forced fp8-storage plan with compile: on."""
    from cluster.planning.memory.replica_plan import plan_replica
    from cluster.planning.placement import NodeCapacity

    spec = spec_with(registry, "on", "none")
    cpu_node = [NodeCapacity("n1", "127.0.0.1", cpus=4, gpus=0, gpu_memory_gb=0, memory_bytes=16 * 2**30)]
    with pytest.raises(ImageGenError) as info:
        plan_replica(spec, cpu_node, None, 64, 64, 2, run_plan="fp8-storage")
    assert info.value.code == "IMG_018" and "layerwise casting" in info.value.message
    assert plan_replica(spec, cpu_node, None, 64, 64, 2, run_plan="resident").name == "resident"


def test_a_compiled_warm_replica_serves_shape_after_shape_past_the_recompile_limit(tiny_models, registry, monkeypatch):
    """Distinct (batch, size) calls on one compiled replica. The recompile limit is set as low as a
    real FLUX's 57 blocks in several input layouts make it in effect (the limit counts cache entries
    of the blocks' shared code): with fullgraph=True, a hit limit used to fail the call."""
    import torch._dynamo

    import actors.core.speed as speed
    from actors.core.diffusers_generator import DiffusersGenerator
    from cluster import env

    monkeypatch.setattr(speed, "COMPILED_SHAPES", 5)
    monkeypatch.setattr(speed, "ENTRIES_PER_SHAPE", 0.6)  # a limit of 3 entries: met before the 5th shape
    torch._dynamo.reset()  # other tests' graphs of the same blocks would count against the limit
    shapes = [(1, 64), (2, 64), (1, 32), (2, 48), (3, 32), (1, 96), (2, 32)]
    config = torch._dynamo.config
    with config.patch(recompile_limit=config.recompile_limit,  # the replica sets them: restored after
                      accumulated_recompile_limit=config.accumulated_recompile_limit):
        replica = DiffusersGenerator(spec_with(registry, "on", "none"), env.cache_dir(), "warm",
                                     memory_plan=PLANS["resident"])
        for batch, size in shapes:
            assert_real_images(replica.generate(tasks(batch, size)), batch, size)
    compiled = replica._compiled
    assert compiled.limit_hits >= 1  # the limit was met inside the replica's shapes, and the call went on
    # seven distinct shapes (two of them the warm-up's): five compiled, the last two eagerly
    assert len(compiled.seen) == 5 and compiled.eager_calls == compiled.limit_hits + 2
