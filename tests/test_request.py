"""Request validation: every bad input gets its IMG code; good input becomes a typed request."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.errors import ImageGenError
from cluster.planning.request import parse_request


def parse(registry, tmp_path, **raw):
    base = {"image_prompt": "a red fox", "folder_name": "out"}
    base.update(raw)
    return parse_request(base, registry, cwd=tmp_path)


def code_of(registry, tmp_path, **raw) -> str:
    with pytest.raises(ImageGenError) as info:
        parse(registry, tmp_path, **raw)
    return info.value.code


def test_defaults_follow_the_design_card(registry, tmp_path):
    req = parse(registry, tmp_path)
    assert req.image_prompt == "a red fox"
    assert req.folder_name == tmp_path / "out"
    assert (req.image_count, req.models, req.generation_strategy) == (1, (), "smart")
    assert (req.enable_comparison, req.quality_threshold, req.max_parallel) == (False, 0.7, 3)
    assert req.models_input == "auto"


def test_values_are_parsed_from_strings(registry, tmp_path):
    req = parse(registry, tmp_path, image_count=" 4 ", models="tiny-flux, tiny-sd", generation_strategy="Parallel",
                enable_comparison="TRUE", quality_threshold="0.25", max_parallel="5", seed="7", width="128",
                height="96", steps="3")
    assert req.image_count == 4
    assert req.models == ("tiny-flux", "tiny-sd")
    assert req.generation_strategy == "parallel"
    assert req.enable_comparison is True
    assert (req.quality_threshold, req.max_parallel, req.seed) == (0.25, 5, 7)
    assert (req.width, req.height, req.steps) == (128, 96, 3)


def test_repeated_models_count_once(registry, tmp_path):
    assert parse(registry, tmp_path, models="tiny-flux,tiny-flux,,").models == ("tiny-flux",)


def test_absolute_folder_is_kept(registry, tmp_path):
    target = tmp_path / "elsewhere" / "run"
    assert parse(registry, tmp_path, folder_name=str(target)).folder_name == target


@pytest.mark.parametrize("count", ["0", "11", "-1", "three", "2.5", "", "1e1"])
def test_bad_image_count_is_img_001(registry, tmp_path, count):
    if count == "":
        assert parse(registry, tmp_path, image_count=count).image_count == 1  # empty = default
    else:
        assert code_of(registry, tmp_path, image_count=count) == "IMG_001"


@pytest.mark.parametrize("models", ["no-such-model", "tiny-flux,nope", "auto,tiny-flux", ",,"])
def test_unknown_models_are_img_002(registry, tmp_path, models):
    assert code_of(registry, tmp_path, models=models) == "IMG_002"


def test_unknown_model_message_suggests_a_close_id(registry, tmp_path):
    with pytest.raises(ImageGenError) as info:
        parse(registry, tmp_path, models="flux-schnel")
    assert "flux-schnell" in info.value.message


@pytest.mark.parametrize("prompt", [None, "", "   ", "\n\t ", "x" * (32768 * 4 + 1), "bad\x00byte", "bell\x07"])
def test_bad_prompts_are_img_009(registry, tmp_path, prompt):
    assert code_of(registry, tmp_path, image_prompt=prompt) == "IMG_009"


def test_prompt_is_stripped_and_may_hold_newlines_and_any_script(registry, tmp_path):
    req = parse(registry, tmp_path, image_prompt="  夕焼けの海\nwith \"quotes\" and $(cmd)  ")
    assert req.image_prompt == "夕焼けの海\nwith \"quotes\" and $(cmd)"


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "high", "inf"])
def test_bad_threshold_is_img_012(registry, tmp_path, value):
    assert code_of(registry, tmp_path, quality_threshold=value) == "IMG_012"


@pytest.mark.parametrize("value", ["fast", "smartest", "1"])
def test_bad_strategy_is_img_013(registry, tmp_path, value):
    assert code_of(registry, tmp_path, generation_strategy=value) == "IMG_013"


@pytest.mark.parametrize("value", ["0", "-2", "65", "many", "1.5"])
def test_bad_max_parallel_is_img_014(registry, tmp_path, value):
    assert code_of(registry, tmp_path, max_parallel=value) == "IMG_014"


@pytest.mark.parametrize("value", ["maybe", "2", "tru"])
def test_bad_comparison_flag_is_img_015(registry, tmp_path, value):
    assert code_of(registry, tmp_path, enable_comparison=value) == "IMG_015"


@pytest.mark.parametrize("folder", [None, "", "  ", "../out", "a/../../b", "/", ".", "bad\x01name", "~no-such-user-0/out"])
def test_bad_folders_are_img_016(registry, tmp_path, folder):
    assert code_of(registry, tmp_path, folder_name=folder) == "IMG_016"


def test_folder_that_is_a_file_or_a_parent_of_cwd_is_refused(registry, tmp_path):
    (tmp_path / "file.txt").write_text("x")
    assert code_of(registry, tmp_path, folder_name="file.txt") == "IMG_016"
    assert code_of(registry, tmp_path, folder_name=str(tmp_path.parent)) == "IMG_016"
    assert code_of(registry, tmp_path, folder_name=str(Path.home())) == "IMG_016"


@pytest.mark.parametrize("field,value", [
    ("seed", "-1"), ("seed", str(2**32)), ("seed", "x"), ("width", "100"), ("width", "8"),
    ("height", "5000"), ("steps", "0"), ("steps", "1000"), ("steps", "two"),
])
def test_bad_overrides_are_img_017(registry, tmp_path, field, value):
    assert code_of(registry, tmp_path, **{field: value}) == "IMG_017"


def test_unknown_input_name_is_img_011(registry, tmp_path):
    assert code_of(registry, tmp_path, colour="red") == "IMG_011"


def test_request_is_immutable(registry, tmp_path):
    from pydantic import ValidationError

    req = parse(registry, tmp_path)
    with pytest.raises(ValidationError) as info:
        req.image_count = 5  # type: ignore[misc]
    assert [(e["type"], e["loc"]) for e in info.value.errors()] == [("frozen_instance", ("image_count",))]
    assert req.image_count != 5
