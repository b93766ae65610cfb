"""Long prompts: accepted up to what the longest reader among the configured models reads (OpenAI
clients send up to 4,000 / 32,000 characters), and what each model's encoders cut of them is
recorded per image and model, counted with the replica's own tokenizers for local models."""

from __future__ import annotations

import json

import pytest
import yaml

from cluster.errors import ImageGenError
from models.prompt_length import PROMPT_CHARS_FLOOR, PromptReader, max_prompt_chars, truncations
from models.registry import load_registry
from tests.helpers import make_request, read_json


def registry_of(tmp_path, ids: list[str]):
    from models.registry import DEFAULT_MODELS_FILE

    doc = yaml.safe_load(DEFAULT_MODELS_FILE.read_text(encoding="utf-8"))
    doc["models"] = {i: doc["models"][i] for i in ids}
    doc["smart_selection"] = {}
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return load_registry(path)


@pytest.mark.parametrize("ids, longest", [
    (None, 32768 * 4),                               # the bundled models: Gemini reads 32,768 tokens
    (["imagen4-fast", "photo-flux"], 512 * 4),       # Imagen's 480, FLUX.1-dev's T5 512
    (["flux-schnell"], PROMPT_CHARS_FLOOR),          # 256 tokens: never below what was accepted before
    (["tiny-sd"], PROMPT_CHARS_FLOOR),
])
def test_the_longest_prompt_is_what_the_longest_reader_reads(tmp_path, ids, longest):
    registry = load_registry() if ids is None else registry_of(tmp_path, ids)
    assert max_prompt_chars(registry) == longest


@pytest.mark.parametrize("length", [4000, 32000])  # dall-e-3's and gpt-image-1's limits
def test_openai_length_prompts_are_accepted_with_the_bundled_models(registry, tmp_path, length):
    prompt = ("a lighthouse on a cliff at dusk, " * 1000)[:length]
    assert make_request(registry, tmp_path, image_prompt=prompt).image_prompt == prompt.strip()


def test_a_prompt_past_the_longest_reader_is_img_009_naming_the_limit(registry, tmp_path):
    with pytest.raises(ImageGenError) as info:
        make_request(registry, tmp_path, image_prompt="x" * (32768 * 4 + 1))
    assert info.value.code == "IMG_009" and "131072" in info.value.message


def test_an_encoder_length_that_the_pipeline_call_contradicts_is_refused(tmp_path):
    doc = {"models": {}}
    doc["models"]["m"] = {"backend": "diffusers", "source": "builtin:tiny-flux", "pipeline": "FluxPipeline",
                          "call_args": {"max_sequence_length": 512},
                          "prompt_encoders": [{"name": "T5", "max_tokens": 256, "length_arg": "max_sequence_length"}]}
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ImageGenError) as info:
        load_registry(path)
    assert info.value.code == "IMG_018" and "max_sequence_length must be 256" in info.value.message


def test_the_replica_counts_with_the_pipelines_own_tokenizers(tiny_models, tmp_path):
    """tiny-flux's tokenizers make a token of each character: CLIP reads 77 tokens with its start
    and end (75 characters), T5 32 with its end. What they cut is what FluxPipeline's own
    truncating call drops (its `tokenizer(..., truncation=True, max_length=...)`)."""
    from diffusers import FluxPipeline

    spec = load_registry().get("tiny-flux")
    pipe = FluxPipeline.from_pretrained(tiny_models["tiny-flux"])
    reader = PromptReader(spec.prompt_encoders, pipe)
    assert reader("a red fox in the snow") == []
    prompt = "a lighthouse on a cliff at dusk, waves breaking below, gulls over the water, storm clouds far out"
    clip, t5 = reader(prompt)
    assert (clip["encoder"], clip["max_tokens"], clip["counted"], t5["encoder"], t5["max_tokens"]) == \
        ("CLIP", 77, "tokenizer", "T5", 32)
    for cut, tokenizer in ((clip, pipe.tokenizer), (t5, pipe.tokenizer_2)):
        assert cut["tokens"] == len(tokenizer(prompt)["input_ids"])
        kept = tokenizer(prompt, truncation=True, max_length=cut["max_tokens"])["input_ids"]
        read = " ".join(tokenizer.decode(kept, skip_special_tokens=True).split())
        assert read.endswith(cut["read_until"]) and cut["read_until"]
    # without the pipeline's tokenizers (the driver, a remote model) the count is an estimate
    (estimate,) = truncations(load_registry().get("imagen4-fast").prompt_encoders, "x" * 4000)
    assert estimate == {"encoder": "Imagen", "max_tokens": 480, "tokens": 1000, "counted": "estimate"}


@pytest.mark.usefixtures("ray_session", "tiny_models")
def test_what_each_model_cut_is_in_the_report_the_events_and_one_summary_line(vertex, tmp_path, capsys):
    """tiny-flux (counted on its replica) and imagen4-fast (estimated: its tokenizer is Google's)
    with a 2,400-character prompt: each image says what its model's encoders cut, the report says
    it per model, and the summary in one `note:` line."""
    from cluster.entrypoints.cli import main

    prompt = ("a lighthouse on a cliff at dusk, waves breaking below, gulls over the water, " * 40)[:2400].strip()
    code = main(["generate", "--image-prompt", prompt, "--folder-name", "out", "--models", "tiny-flux,imagen4-fast",
                 "--scorer", "none", "--seed", "1", "--json"])
    assert code == 0
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    by_model = {i["model_used"]: i["prompt_truncated"] for i in report["images"]}
    flux, imagen = by_model["tiny-flux"], by_model["imagen4-fast"]
    assert [(c["encoder"], c["max_tokens"], c["counted"]) for c in flux] == [("CLIP", 77, "tokenizer"),
                                                                            ("T5", 32, "tokenizer")]
    assert imagen == [{"encoder": "Imagen", "max_tokens": 480, "tokens": 600, "counted": "estimate"}]
    assert report["prompt_truncation"] == {"tiny-flux": flux, "imagen4-fast": imagen}
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    cut_events = [e for e in lines if e.get("event") == "prompt_truncated"]
    assert sorted(e["model"] for e in cut_events) == ["imagen4-fast", "tiny-flux"]
    (summary,) = [e for e in lines if e.get("event") == "summary"]
    (note,) = [c for c in summary["changes"] if c.startswith("prompt cut:")]
    assert "tiny-flux reads 77 of" in note and "imagen4-fast reads 480 of about 600 tokens (Imagen)" in note


@pytest.mark.usefixtures("ray_session", "tiny_models")
def test_a_prompt_every_encoder_reads_whole_reports_no_cut(tmp_path, capsys):
    from cluster.entrypoints.cli import main

    assert main(["generate", "--image-prompt", "a red fox", "--folder-name", "out", "--models", "tiny-flux",
                 "--scorer", "none"]) == 0
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert report["prompt_truncation"] is None and "prompt_truncated" not in report["images"][0]
    assert "prompt cut" not in capsys.readouterr().out
