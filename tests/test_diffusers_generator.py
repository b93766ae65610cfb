"""The diffusers generator itself (no Ray): seeds, batching, cancellation, its own time budget."""

from __future__ import annotations

import numpy as np
import pytest

from actors.core.diffusers_generator import DiffusersGenerator
from cluster import env
from cluster.errors import ImageGenError
from cluster.output.png import decode, read_parameters
from cluster.work import CallOptions, ImageTask


@pytest.fixture(scope="module")
def tiny_sd(tiny_models, registry):
    return DiffusersGenerator(registry.get("tiny-sd"), env.cache_dir(), "tiny-sd-test")


def task(index: int, seed: int) -> ImageTask:
    return ImageTask(index, "tiny-sd", "a lighthouse at dusk", seed, 64, 64, 2, 1.0)


def pixels(image) -> np.ndarray:
    return np.asarray(decode(image.png), dtype=int)


def test_a_batch_gives_each_image_what_its_seed_gives_alone(tiny_sd):
    alone = tiny_sd.generate([task(0, 5)])
    batch = tiny_sd.generate([task(0, 5), task(1, 6)])
    assert np.abs(pixels(alone[0]) - pixels(batch[0])).max() <= 1  # one generator per image
    assert np.abs(pixels(batch[0]) - pixels(batch[1])).mean() > 5  # a different seed, a different image
    assert read_parameters(batch[1].png)["seed"] == 6
    assert (batch[0].width, batch[0].height, batch[0].weights) == (64, 64, "random")
    import torch

    assert tiny_sd.device == ("cuda" if torch.cuda.is_available() else "cpu") and tiny_sd.load_seconds > 0


@pytest.mark.parametrize("free, placement", [
    ([], {}),
    ([24 * 2**30], {}),  # one card: the whole pipeline goes onto it
    ([20 * 2**30, 10 * 2**30], {"device_map": "balanced", "max_memory": {0: int(20 * 2**30 * 0.95),
                                                                        1: int(10 * 2**30 * 0.95)}}),
])
def test_several_assigned_cards_share_the_pipelines_components(free, placement):
    from actors.core.diffusers_generator import card_placement

    assert card_placement(free) == placement


def test_cancel_stops_the_call_at_its_next_step(tiny_sd):
    tiny_sd.cancel("call-1", "IMG_003", "timeout_per_image reached")
    with pytest.raises(ImageGenError) as info:
        tiny_sd.generate([task(0, 1)], "call-1")
    assert info.value.code == "IMG_003" and "at step" in info.value.message
    assert tiny_sd.generate([task(0, 1)], "call-2")  # the pipeline is fine afterwards


def test_the_call_keeps_its_own_time_budget(tiny_sd):
    with pytest.raises(ImageGenError) as info:
        tiny_sd.generate([task(0, 1)], "call-3", CallOptions(budget_s=0.0))
    assert info.value.code == "IMG_003" and "timeout_per_image" in info.value.message


class Built(Exception):
    pass


def pretend_cards(monkeypatch, count: int, bf16: bool = True, capability=(8, 6)):
    """torch answering as a machine with `count` 24 GiB cards would: what the generator asks before
    it builds anything (the build itself is captured by the test)."""
    import torch

    cuda = torch.cuda
    for name, value in (("is_available", lambda: True), ("device_count", lambda: count),
                        ("mem_get_info", lambda i=0: (24 * 2**30, 24 * 2**30)), ("get_device_name", lambda i=0: "card"),
                        ("reset_peak_memory_stats", lambda i=0: None), ("is_bf16_supported", lambda *a: bf16),
                        ("get_device_capability", lambda i=0: capability)):
        monkeypatch.setattr(cuda, name, value)


@pytest.mark.parametrize("cards", [1, 2])
def test_a_replica_over_several_cards_builds_on_a_device_torch_knows(registry, monkeypatch, cards):
    """The display name of a device-mapped replica ("cuda:0-1 (balanced)") is for reports only."""
    import torch

    import actors.core.diffusers_generator as module

    pretend_cards(monkeypatch, cards)
    seen = {}

    def build(name, plan, device, dtype, torch_module):
        seen.update(device=device, dtype=dtype)
        raise Built

    monkeypatch.setattr(module, "build_planned", build)
    with pytest.raises(Built):
        DiffusersGenerator(registry.get("flux-schnell-arch"), env.cache_dir(), "arch", gpu_reserve_gb=20)
    assert torch.device(seen["device"]).type == "cuda" and seen["dtype"] == torch.bfloat16


def test_bf16_on_a_card_without_it_computes_in_fp16_and_says_why(monkeypatch):
    import torch

    from actors.core.diffusers_generator import compute_dtype

    pretend_cards(monkeypatch, 1, bf16=False, capability=(7, 5))
    dtype, note = compute_dtype("bfloat16", True, torch)
    assert dtype == torch.float16 and "compute capability 7.5" in note and "float16" in note
    assert compute_dtype("float32", True, torch) == (torch.float32, "")
    assert compute_dtype("bfloat16", False, torch) == (torch.float32, "")
