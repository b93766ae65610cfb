"""Tiny random-weight diffusers pipelines, built locally and loaded like real ones.

The shapes follow diffusers' own `get_dummy_components()` tests: one transformer layer,
hidden sizes of 32, a VAE with a single block. They are saved with `save_pretrained`
and loaded back through the same `from_pretrained` path as FLUX.1, so tests and the
demo exercise the real pipeline code. Tokenizers are made here with the `tokenizers`
library because the Hugging Face Hub is not reachable from CI.

Weights are seeded, so every machine builds the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

# Bump when a builder changes, so old caches are not reused.
TINY_VERSION = "v2"
BUILDERS = {"tiny-flux": "_build_tiny_flux", "tiny-sd": "_build_tiny_sd"}


def tiny_pipeline_dir(name: str, cache_root: Path) -> Path:
    """The folder holding the saved pipeline `name`, building it on first use."""
    if name not in BUILDERS:
        raise KeyError(name)
    target = cache_root / "tiny" / f"{name}-{TINY_VERSION}"
    return _build_once(target, "model_index.json", lambda scratch: globals()[BUILDERS[name]]().save_pretrained(scratch))


def _build_once(target: Path, marker: str, build) -> Path:
    """`target`, made by `build(folder)` unless already there. Safe when several actors build at
    once: each builds into its own temporary folder and the first to rename it into place wins."""
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(scratch)
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / marker).is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def clip_tokenizer(max_length: int = 77):
    """A byte-level BPE CLIP tokenizer with no merges: every character is a token."""
    from transformers import CLIPTokenizer

    chars = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        Path(tmp, "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=max_length)


def _byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table (as CLIP uses it): 256 printable stand-ins for the bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = [], 0
    for byte in range(256):
        if byte in printable:
            codes.append(byte)
        else:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def t5_tokenizer(max_length: int = 64):
    """A Unigram tokenizer shaped like T5's: <pad>=0, </s>=1, <unk>=2, then characters."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import AutoTokenizer

    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [("\u2581" + c, -2.0) for c in alphabet] + [(c, -3.0) for c in alphabet]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(str(Path(tmp, "tokenizer.json")))
        Path(tmp, "tokenizer_config.json").write_text(
            json.dumps({
                "tokenizer_class": "T5Tokenizer", "model_max_length": max_length,
                "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "extra_ids": 0,
            }),
            encoding="utf-8",
        )
        return AutoTokenizer.from_pretrained(tmp)


def _clip_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
        hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=vocab_size, hidden_act="gelu", projection_dim=32,
        max_position_embeddings=77,
    )
    return CLIPTextModel(config)


def _build_tiny_flux():
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    tokenizer_2 = t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )
    text_encoder = _clip_text_encoder(len(tokenizer))
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))
    # FLUX's latent geometry: four VAE blocks downsample x8, the pipeline packs 2x2 latents into a
    # token, so a request's token count is the real model's (4,096 image tokens at 1024x1024)
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 4, 4, 4), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
    )


def _build_tiny_sd():
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=2,
    )
    vae = AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, norm_num_groups=2,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=_clip_text_encoder(len(tokenizer)), tokenizer=tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


# What the tiny translator's tokenizer is trained on: a few prompts in the languages it claims,
# and their English, so every script it may meet has pieces.
TRANSLATION_CORPUS = """\
東京の夜景、シネマティック
雨の中の灯台、水彩画
桜の木の下の猫
富士山と朝焼け
一只猫在月光下
雨中的灯塔，水彩画
城市夜景，霓虹灯
서울의 밤거리
비 오는 날의 등대
un faro al atardecer, acuarela
una calle de neón en la ciudad de noche
un phare au crépuscule, aquarelle
ein Leuchtturm in der Dämmerung
a night view of Tokyo, cinematic
a lighthouse in the rain, watercolor
a cat under a cherry tree
Mount Fuji at dawn
a cat in the moonlight
a city at night with neon lights
a neon street in Shibuya
"""


def tiny_translator_dir(cache_root: Path) -> Path:
    """A MarianMT with tiny configs and random weights and a sentencepiece tokenizer trained here on
    TRANSLATION_CORPUS, saved and loaded back like a real one (Helsinki-NLP's layout)."""
    def build(folder: Path) -> None:
        import sentencepiece as spm
        import torch
        from transformers import MarianConfig, MarianMTModel, MarianTokenizer

        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            corpus = Path(tmp, "corpus.txt")
            corpus.write_text(TRANSLATION_CORPUS, encoding="utf-8")
            spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(Path(tmp, "spm")), vocab_size=120,
                                           character_coverage=1.0, model_type="unigram", pad_id=3, pad_piece="<pad>",
                                           bos_id=-1, minloglevel=2)
            model_file = str(Path(tmp, "spm.model"))
            processor = spm.SentencePieceProcessor(model_file=model_file)
            vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
            Path(tmp, "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
            tokenizer = MarianTokenizer(source_spm=model_file, target_spm=model_file, vocab=str(Path(tmp, "vocab.json")),
                                        model_max_length=128)
            tokenizer.save_pretrained(folder)
        config = MarianConfig(vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1,
                              encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                              decoder_ffn_dim=32, max_position_embeddings=128, pad_token_id=vocab["<pad>"],
                              eos_token_id=vocab["</s>"], decoder_start_token_id=vocab["<pad>"])
        MarianMTModel(config).save_pretrained(folder)

    return _build_once(cache_root / "tiny" / f"tiny-marian-{TINY_VERSION}", "config.json", build)


TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_clip_dir(cache_root: Path) -> Path:
    """An open_clip `local-dir:` model (config + safetensors) with tiny towers and random weights.
    Its tokenizer is open_clip's bundled BPE vocabulary, so nothing is fetched."""
    def build(folder: Path) -> None:
        import torch
        from open_clip.model import CLIP
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = CLIP(**TINY_CLIP_CONFIG)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
        (folder / "open_clip_config.json").write_text(json.dumps({
            "model_cfg": TINY_CLIP_CONFIG,
            "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
        }))

    return _build_once(cache_root / "tiny" / f"tiny-clip-{TINY_VERSION}", "open_clip_config.json", build)
