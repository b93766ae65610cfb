"""Prompts in any language: detection, a translator stage for the models that need English (the tiny
MarianMT, and Gemini at the loopback Vertex server), what each model received, recorded everywhere."""

from __future__ import annotations

import pytest

from cluster.errors import ImageGenError
from cluster.planning.language import detect, needs_translation
from models.hub_cli import hub_command
from tests.helpers import make_request, quick_limits, read_json

JAPANESE = "東京の夜景、シネマティック"


@pytest.mark.parametrize("text, language, languages", [
    (JAPANESE, "ja", ("ja",)),
    ("雨の中の灯台、水彩画", "ja", ("ja",)),
    ("一只猫在月光下", "zh", ("zh",)),
    ("서울의 밤거리", "ko", ("ko",)),
    ("una calle de neón en la ciudad de noche", "es", ("es",)),
    ("ein Leuchtturm in der Dämmerung bei Sturm", "de", ("de",)),
    ("a photorealistic portrait of an old fisherman", "en", ("en",)),
    ("neon street", "en", ("en",)),  # too short to judge: English
    ("a neon street in 渋谷", "mixed", ("zh", "en")),
    ("Москва ночью", "ru", ("ru",)),
])
def test_detection(text, language, languages):
    found = detect(text)
    assert (found.language, found.languages) == (language, languages) and found.method


def test_which_models_need_a_translation(registry):
    flux, imagen = registry.get("flux-schnell"), registry.get("imagen4-fast")
    assert needs_translation(detect(JAPANESE), flux.prompt_languages)
    assert not needs_translation(detect(JAPANESE), imagen.prompt_languages)  # Imagen reads Japanese
    assert not needs_translation(detect("a lighthouse at dusk"), flux.prompt_languages)
    assert needs_translation(detect("a neon street in 渋谷"), flux.prompt_languages)


@pytest.mark.usefixtures("ray_session")
def test_a_japanese_prompt_reaches_flux_translated_and_everything_records_both(tmp_path, registry, tiny_models):
    from cluster.output.png import read_parameters
    from cluster.pipeline.run import run_generation

    request = make_request(registry, tmp_path, image_prompt=JAPANESE, models="tiny-flux", image_count=2,
                           translate="tiny-marian", scorer="none")
    result = run_generation(request, registry, quick_limits())
    assert result.exit_code == 0
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    language = report["prompt_language"]
    assert language["original"] == JAPANESE and language["language"] == "ja" and language["translator"] == "tiny-marian"
    english = language["english"]
    assert english and english != JAPANESE and language["models_translated_for"] == ["tiny-flux"]
    for entry in report["images"]:
        assert entry["original_prompt"] == JAPANESE and entry["prompt_received"] == english == entry["prompt"]
        assert entry["prompt_language"] == "ja" and entry["translator"] == "tiny-marian"
    params = read_parameters((tmp_path / "out/images/generated-image-1.png").read_bytes())
    assert (params["prompt"], params["original_prompt"], params["language"], params["translator"]) == \
        (english, JAPANESE, "ja", "tiny-marian")


@pytest.mark.usefixtures("ray_session")
def test_translate_off_sends_the_original(tmp_path, registry, tiny_models):
    from cluster.pipeline.run import run_generation

    request = make_request(registry, tmp_path, image_prompt=JAPANESE, models="tiny-flux", translate="off", scorer="none")
    run_generation(request, registry, quick_limits())
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert report["images"][0]["prompt_received"] == JAPANESE and report["prompt_language"]["english"] is None
    assert "--translate off" in report["prompt_language"]["note"]


@pytest.mark.usefixtures("ray_session")
def test_no_translator_here_passes_the_original_through_unless_required(tmp_path, registry, tiny_models):
    from cluster.pipeline.run import run_generation

    # auto: NLLB and opus-mt are not in this machine's Hugging Face cache, and no Google credentials
    request = make_request(registry, tmp_path, image_prompt=JAPANESE, models="tiny-flux", scorer="none")
    assert run_generation(request, registry, quick_limits()).exit_code == 0
    note = read_json(tmp_path / "out/metadata/generation-report.json")["prompt_language"]["note"]
    assert "no translator available" in note and f"{hub_command()} download" in note
    required = make_request(registry, tmp_path, image_prompt=JAPANESE, models="tiny-flux", scorer="none",
                            translate="required", folder_name="strict")
    with pytest.raises(ImageGenError) as info:
        run_generation(required, registry, quick_limits())
    assert info.value.code == "IMG_030" and info.value.exit_status == 2 and not (tmp_path / "strict").exists()


@pytest.mark.usefixtures("ray_session")
def test_gemini_translates_and_imagen_gets_the_original(vertex, tmp_path, registry, tiny_models):
    from cluster.pipeline.run import run_generation

    request = make_request(registry, tmp_path, image_prompt=JAPANESE, models="tiny-flux,imagen4-fast",
                           translate="gemini-flash", scorer="none")
    assert run_generation(request, registry, quick_limits()).exit_code == 0
    (translation,) = vertex.of("gemini-2.5-flash")
    assert JAPANESE in translation["body"]["contents"][0]["parts"][0]["text"]
    (imagen,) = vertex.of("imagen-4.0-fast-generate-001")
    assert imagen["body"]["instances"][0]["prompt"] == JAPANESE  # Imagen reads Japanese: the original
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    received = {e["model_used"]: e["prompt_received"] for e in report["images"]}
    assert received == {"tiny-flux": vertex.text_answer, "imagen4-fast": JAPANESE}


@pytest.mark.usefixtures("ray_session")
def test_a_gemini_translation_error_passes_through_or_fails_when_required(vertex, tmp_path, registry, tiny_models):
    from cluster.pipeline.run import run_generation

    vertex.modes["gemini-2.5-flash"] = "429:99"  # quota: IMG_006
    request = make_request(registry, tmp_path, image_prompt=JAPANESE, models="tiny-flux", translate="gemini-flash",
                           scorer="none")
    assert run_generation(request, registry, quick_limits()).exit_code == 0
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert "IMG_006" in report["prompt_language"]["note"] and report["images"][0]["prompt_received"] == JAPANESE
    for mode, code in (("429:99", "IMG_006"), ("401", "IMG_007")):
        vertex.modes["gemini-2.5-flash"] = mode
        strict = make_request(registry, tmp_path, image_prompt=JAPANESE, models="tiny-flux", translate="required",
                              scorer="none", folder_name="strict")
        with pytest.raises(ImageGenError) as info:  # auto order reaches gemini-flash: the only one available
            run_generation(strict, registry, quick_limits())
        assert info.value.code == "IMG_030" and code in info.value.message and not (tmp_path / "strict").exists()


@pytest.mark.usefixtures("ray_session")
@pytest.mark.slow  # a warm cluster brought up and down (20 s): `./scripts/test.sh -m slow`, and CI
def test_each_distinct_prompt_is_translated_once_and_a_warm_translator_remembers(tmp_path, registry, tiny_models):
    import ray

    from cluster.engine.resident import actor_handle, registry_actor
    from cluster.pipeline.run import run_generation
    from cluster.entrypoints.warm import bring_down

    try:
        for folder in ("one", "two"):
            request = make_request(registry, tmp_path, image_prompt=JAPANESE, models="tiny-flux", image_count=3,
                                   translate="tiny-marian", scorer="none", folder_name=folder)
            run_generation(request, registry, quick_limits(), resident=True)
        (name,) = [e["name"] for e in ray.get(registry_actor().entries.remote()) if e["kind"] == "translator"]
        stats = ray.get(actor_handle(name).stats.remote())
        assert stats == {"translations": 1, "cached_prompts": 1}  # six images, two runs, one translation
        assert read_json(tmp_path / "two/metadata/generation-report.json")["prompt_language"]["cached"] is True
    finally:
        bring_down()


@pytest.mark.parametrize("text, plain", [
    ("a photorealistic portrait of an old fisherman at the harbour", True),
    ("a lighthouse at dusk with storm clouds above the sea", True),
    ("la casa de the sunset y el mar al atardecer", False),  # Spanish words beside English ones
    ("ein Leuchtturm mit the Sturm in der Nacht", False),
    ("a portrait of a café owner in the morning light", False),  # not ASCII: the model decides
    ("cinematic neon street, wet asphalt, rain, reflections", False),  # no English function word
])
def test_plain_english_is_recognised_without_the_model(text, plain):
    from cluster.planning.language import WORD, plainly_english

    assert plainly_english(text, WORD.findall(text)) is plain


def test_an_english_prompt_never_loads_the_identifier_and_another_language_loads_it_once():
    import subprocess
    import sys

    code = ("import sys; from cluster.planning import language as l; "
            "a = l.detect('a photorealistic portrait of an old fisherman at the harbour'); "
            "print(a.language, 'py3langid' in sys.modules); "
            "b = l.detect('una calle de neón en la ciudad de noche'); first = l._IDENTIFIER; "
            "c = l.detect('una casa blanca junto al mar en verano'); "
            "print(b.language, c.language, 'py3langid' in sys.modules, l._IDENTIFIER is first)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.split("\n")[:2] == ["en False", "es es True True"]
