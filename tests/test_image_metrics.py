"""Weight-free metrics on synthetic images: the expected order, and the seed's weighting."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from cluster.quality.image_metrics import generation_artifacts, technical_quality
from cluster.quality.score import WEIGHTS, effective_weights, overall_score, quality_tier


@pytest.fixture(scope="module")
def images():
    y, x = np.mgrid[0:128, 0:128]
    sharp = np.stack([(x % 32 < 16) * 200 + 25, (y % 24 < 12) * 180 + 30, ((x + y) % 40 < 20) * 150 + 50], -1)
    sharp = sharp.astype(np.uint8)
    blurred = np.asarray(Image.fromarray(sharp).filter(ImageFilter.GaussianBlur(3)))
    rng = np.random.default_rng(0)
    return {
        "sharp": sharp,
        "blurred": blurred,
        "black": np.zeros_like(sharp),
        "flat": np.full_like(sharp, 128),
        "noise": rng.integers(0, 256, sharp.shape).astype(np.uint8),
        "overexposed": np.clip(sharp.astype(int) + 180, 0, 255).astype(np.uint8),
    }


def test_sharp_beats_blurred_beats_flat(images):
    tq = {k: technical_quality(v, (128, 128)) for k, v in images.items()}
    assert tq["sharp"].sharpness > tq["blurred"].sharpness > tq["flat"].sharpness
    assert tq["sharp"].technical_quality > tq["blurred"].technical_quality > tq["flat"].technical_quality
    assert tq["sharp"].exposure > tq["overexposed"].exposure
    assert tq["black"].technical_quality < tq["blurred"].technical_quality
    for report in tq.values():
        for value in (report.technical_quality, report.sharpness, report.exposure, report.contrast):
            assert 0.0 <= value <= 1.0


def test_resolution_below_the_request_costs(images):
    full = technical_quality(images["sharp"], (128, 128))
    asked_more = technical_quality(images["sharp"], (256, 256))
    assert asked_more.resolution == pytest.approx(0.25)
    assert asked_more.technical_quality < full.technical_quality


def test_artifacts_flag_black_flat_noise_and_nan(images):
    art = {k: generation_artifacts(v) for k, v in images.items()}
    assert art["sharp"].generation_artifacts < 0.2 and art["blurred"].generation_artifacts < 0.2
    assert "black" in art["black"].flags and art["black"].generation_artifacts == 1.0
    assert "blank" in art["flat"].flags and "black" not in art["flat"].flags
    assert "noise" in art["noise"].flags
    nan_decode = generation_artifacts(images["sharp"], nonfinite_fraction=0.2)
    assert "nonfinite" in nan_decode.flags and nan_decode.generation_artifacts >= 0.5


def test_a_uint8_frame_of_zeros_and_ones_is_black_not_mid_grey(images):
    rng = np.random.default_rng(1)
    dark = rng.integers(0, 2, images["sharp"].shape).astype(np.uint8)  # pixel values 0 or 1 of 255
    assert set(np.unique(dark)) == {0, 1}
    art = generation_artifacts(dark)
    assert "black" in art.flags and art.generation_artifacts == 1.0
    assert technical_quality(dark, (128, 128)).mean_luminance == pytest.approx(0.5 / 255, abs=5e-4)
    # The same values as floats are a 0..1 image: half white, which is not black.
    assert "black" not in generation_artifacts(dark.astype(np.float32)).flags


def test_float_and_integer_frames_of_one_image_score_alike(images):
    as_float = images["sharp"].astype(np.float32) / 255.0
    assert technical_quality(as_float, (128, 128)).technical_quality == pytest.approx(
        technical_quality(images["sharp"], (128, 128)).technical_quality, abs=1e-6)
    sixteen = images["sharp"].astype(np.uint16) * 257  # 16-bit PNGs scale 255 to 65535
    assert technical_quality(sixteen, (128, 128)).mean_luminance == pytest.approx(
        technical_quality(images["sharp"], (128, 128)).mean_luminance)


def test_overall_is_the_seed_weighting():
    detailed = {"technical_quality": 0.8, "prompt_alignment": 0.6, "aesthetic_appeal": 0.5,
                "generation_artifacts": 0.1}
    expected = 0.3 * 0.8 + 0.4 * 0.6 + 0.2 * 0.5 + 0.1 * (1 - 0.1)
    assert overall_score(detailed) == pytest.approx(expected)
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)


def test_missing_scores_renormalise_instead_of_inventing_numbers():
    detailed = {"technical_quality": 0.8, "prompt_alignment": None, "aesthetic_appeal": None,
                "generation_artifacts": 0.2}
    assert overall_score(detailed) == pytest.approx((0.3 * 0.8 + 0.1 * 0.8) / 0.4)
    assert effective_weights(detailed) == {"technical_quality": 0.75, "generation_artifacts": 0.25}


@pytest.mark.parametrize("score,tier", [(0.9, "excellent"), (0.75, "good"), (0.55, "acceptable"),
                                        (0.35, "poor"), (0.1, "unusable")])
def test_tiers(score, tier):
    assert quality_tier(score) == tier


# Each bound belongs to the tier above it (the seed's ">= 0.85 excellent" ...); just under it does not.
@pytest.mark.parametrize("score,tier", [
    (1.0, "excellent"), (0.85, "excellent"), (0.8499, "good"),
    (0.70, "good"), (0.6999, "acceptable"),
    (0.50, "acceptable"), (0.4999, "poor"),
    (0.30, "poor"), (0.2999, "unusable"), (0.0, "unusable"),
])
def test_tier_boundaries(score, tier):
    assert quality_tier(score) == tier


@pytest.mark.parametrize("bound,tier", [(0.85, "excellent"), (0.70, "good"), (0.50, "acceptable"), (0.30, "poor")])
def test_a_computed_score_on_a_boundary_gets_the_tier_it_is_reported_with(bound, tier):
    # Without alignment and aesthetics the weights are renormalised, which leaves float error:
    # 0.7 everywhere comes out as 0.6999999999999998 and is reported as 0.7.
    detailed = {"technical_quality": bound, "prompt_alignment": None, "aesthetic_appeal": None,
                "generation_artifacts": round(1 - bound, 2)}
    overall = overall_score(detailed)
    assert round(overall, 4) == bound
    assert quality_tier(overall) == tier
    from cluster.quality.score import make_score

    reported = make_score(detailed, {}).as_dict()
    assert (reported["overall_score"], reported["quality_tier"]) == (bound, tier)
