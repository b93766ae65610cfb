"""Speed options as a replica applies them, on the CPU: what runs here runs, what cannot is refused
when asked for explicitly and skipped with its reason under `auto`; the report says which."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.errors import ImageGenError
from models.registry import SpeedOptions


def generator(registry, **options):
    from actors.diffusers_generator import DiffusersGenerator
    from cluster import env

    spec = registry.get("tiny-flux")
    spec = spec.model_copy(update={"speedups": SpeedOptions(**options), "steps": 6})
    return DiffusersGenerator(spec, env.cache_dir(), "speed-test")


def task(index: int = 0):
    from cluster.work import ImageTask

    return ImageTask(index, "tiny-flux", "a lighthouse at dusk", 11, 64, 64, 6, 0.0)


def test_auto_applies_what_the_cpu_can_and_says_why_it_skipped_the_rest(tiny_models, registry):
    speed = generator(registry).speed.as_dict()
    assert speed["applied"] == {}
    assert "CUDA only" in speed["skipped"]["compile"]
    assert "torchao is not installed" in speed["skipped"]["quantize"] or "CUDA" in speed["skipped"]["quantize"]
    assert set(speed["skipped"]) == {"compile", "quantize", "attention_backend", "cache"}


def test_a_first_block_cache_and_the_native_attention_backend_run_on_the_cpu(tiny_models, registry):
    plain = generator(registry, compile="off", quantize="none")
    cached = generator(registry, compile="off", quantize="none", cache="first-block", cache_threshold=0.5,
                       attention_backend="native")
    assert cached.speed.applied == {"cache": "first-block (threshold 0.5)", "attention_backend": "native"}
    (a,), (b,) = plain.generate([task()]), cached.generate([task()])
    assert b.nonfinite_fraction == 0.0
    from cluster.png import decode

    assert np.asarray(decode(b.png)).std() > 0 and a.png != b.png  # steps were reused: the pixels moved


@pytest.mark.parametrize("options, says", [
    ({"compile": "on"}, "CUDA only"),
    ({"quantize": "int8"}, "quantize: int8 cannot be used here"),
    ({"attention_backend": "flash"}, "needs a CUDA device"),
    ({"attention_backend": "warp-drive"}, "is not one of diffusers'"),
])
def test_an_explicit_option_the_device_cannot_use_is_refused_at_load(tiny_models, registry, options, says):
    with pytest.raises(ImageGenError) as info:
        generator(registry, **options)
    assert info.value.code == "IMG_018" and says in info.value.message


def test_flux_schnell_arch_is_refused_without_a_gpu_before_building(registry):
    import torch

    from actors.diffusers_generator import DiffusersGenerator
    from cluster import env

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: it would build")
    with pytest.raises(ImageGenError) as info:
        DiffusersGenerator(registry.get("flux-schnell-arch"), env.cache_dir(), "arch")
    assert info.value.code == "IMG_010" and "needs a CUDA GPU" in info.value.message


def test_tiny_flux_keeps_fluxs_latent_geometry(tiny_models):
    import diffusers

    pipe = diffusers.FluxPipeline.from_pretrained(tiny_models["tiny-flux"])
    assert pipe.vae_scale_factor == 8
    assert (1024 // pipe.vae_scale_factor // 2) ** 2 == 4096  # FLUX.1's image tokens at 1024x1024
