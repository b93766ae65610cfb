"""Speed options as a replica applies them, on the CPU: what runs here runs, what cannot is refused
when asked for explicitly and skipped with its reason under `auto`; the report says which."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.errors import ImageGenError
from models.registry import SpeedOptions


def generator(registry, **options):
    from actors.core.diffusers_generator import DiffusersGenerator
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
    assert "auto compiles on CUDA only (set compile: on" in speed["skipped"]["compile"]
    assert "auto quantizes on CUDA cards only" in speed["skipped"]["quantize"]  # torchao is a test extra
    assert set(speed["skipped"]) == {"compile", "quantize", "attention_backend", "cache"}


def test_a_first_block_cache_and_the_native_attention_backend_run_on_the_cpu(tiny_models, registry):
    plain = generator(registry, compile="off", quantize="none")
    cached = generator(registry, compile="off", quantize="none", cache="first-block", cache_threshold=0.5,
                       attention_backend="native")
    assert cached.speed.applied == {"cache": "first-block (threshold 0.5)", "attention_backend": "native"}
    plain_calls, cached_calls = computed_blocks(plain), computed_blocks(cached)
    (a,), (b,) = plain.generate([task()]), cached.generate([task()])
    assert b.nonfinite_fraction == 0.0
    from cluster.output.png import decode

    assert np.asarray(decode(b.png)).std() > 0
    # the cache is the blocks after the first not computed on the steps it reuses: counted at each
    # block's attention, which only a computed block reaches (a skipped one returns its cached residual)
    blocks = len(plain_calls)
    assert plain_calls == {i: 6 for i in range(blocks)}  # 6 steps, every block every step
    assert cached_calls[0] == 6 and sum(cached_calls.values()) < 6 * blocks


def computed_blocks(generator) -> dict[int, int]:
    """How many times each transformer block of `generator`'s denoiser really computes (filled as it runs)."""
    transformer = generator.pipe.transformer
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    calls = {i: 0 for i in range(len(blocks))}
    for i, block in enumerate(blocks):
        block.attn.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def test_int8_quantization_runs_through_torchao_on_the_cpu(tiny_models, registry):
    from torchao.quantization import Int8Tensor

    plain = generator(registry, compile="off", quantize="none")
    quantized = generator(registry, compile="off", quantize="int8")
    assert quantized.speed.applied == {"quantize": "int8 dynamic (torchao, the denoiser's linear layers)"}

    def linear_weights(generator):
        return [m.weight for m in generator.pipe.transformer.modules() if type(m).__name__ == "Linear"]

    weights = linear_weights(quantized)
    assert weights and all(isinstance(w, Int8Tensor) for w in weights)
    assert not any(isinstance(w, Int8Tensor) for w in linear_weights(plain))
    # what the option is for: the denoiser's linear layers held in a quarter of their float32 bytes
    bytes_of = lambda ws: sum(w.qdata.numel() if isinstance(w, Int8Tensor) else w.numel() * w.element_size()
                              for w in ws)
    assert bytes_of(weights) * 4 == bytes_of(linear_weights(plain))
    (a,), (b,) = plain.generate([task()]), quantized.generate([task()])
    assert b.nonfinite_fraction == 0.0 and a.png != b.png
    from cluster.output.png import decode

    assert np.asarray(decode(b.png)).std() > 0


def test_quantize_without_torchao_is_refused_when_asked_and_skipped_under_auto(tiny_models, registry, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(ImageGenError) as info:
        generator(registry, quantize="int8")
    assert info.value.code == "IMG_018" and "torchao is not installed" in info.value.message
    assert "torchao is not installed" in generator(registry).speed.skipped["quantize"]


@pytest.mark.parametrize("options, says", [
    ({"quantize": "fp8"}, "fp8 needs a CUDA card"),
    ({"attention_backend": "flash"}, "needs a CUDA device"),
    ({"attention_backend": "warp-drive"}, "is not one of diffusers'"),
])
def test_an_explicit_option_the_device_cannot_use_is_refused_at_load(tiny_models, registry, options, says):
    with pytest.raises(ImageGenError) as info:
        generator(registry, **options)
    assert info.value.code == "IMG_018" and says in info.value.message


def test_flux_schnell_arch_is_refused_without_a_gpu_before_building(registry):
    import torch

    from actors.core.diffusers_generator import DiffusersGenerator
    from cluster import env

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: it would build")
    with pytest.raises(ImageGenError) as info:
        DiffusersGenerator(registry.get("flux-schnell-arch"), env.cache_dir(), "arch")
    assert info.value.code == "IMG_010" and "needs a CUDA GPU" in info.value.message


def test_tiny_flux_keeps_fluxs_latent_geometry(tiny_models):
    import diffusers

    import torch

    pipe = diffusers.FluxPipeline.from_pretrained(tiny_models["tiny-flux"])
    assert pipe.vae_scale_factor == 8
    # what the pipeline itself packs at 1024x1024: FLUX.1's 4096 image tokens, each a 2x2 latent patch
    channels = pipe.transformer.config.in_channels // 4
    latents, ids = pipe.prepare_latents(1, channels, 1024, 1024, torch.float32, "cpu", torch.Generator().manual_seed(0))
    assert latents.shape == (1, 4096, channels * 4) and ids.shape == (4096, 3)
