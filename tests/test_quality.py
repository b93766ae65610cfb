"""The CLIP scorer and the quality framework: planted embeddings, the actor, the reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import ray
import torch

from actors.clip_scorer import AESTHETIC_EMBED_DIM, ClipScorer, ScoreItem, aesthetic_mlp
from cluster import env
from cluster.quality import aesthetic_from_predictor, alignment_from_clipscore, clip_score
from cluster.run import run_generation
from cluster.scoring import ActorScorer, WeightFreeScorer, make_scorer
from models.scorers import ScorerSpec, load_scoring
from tests.helpers import generated, make_request, quick_limits, read_json, scripted_registry


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def with_cosine(text: np.ndarray, cosine: float) -> np.ndarray:
    """A unit vector at exactly `cosine` to `text`."""
    other = np.zeros_like(text)
    other[1] = 1.0
    other = unit(other - other.dot(text) * text)
    return unit(cosine * text + np.sqrt(1 - cosine**2) * other)


def test_clipscore_and_calibration():
    assert clip_score(0.3) == pytest.approx(0.75)
    assert clip_score(-0.4) == 0.0  # w * max(cos, 0)
    assert alignment_from_clipscore(clip_score(0.35), 0.15, 0.35) == pytest.approx(1.0)
    assert alignment_from_clipscore(clip_score(0.25), 0.15, 0.35) == pytest.approx(0.5)
    assert alignment_from_clipscore(clip_score(0.10), 0.15, 0.35) == 0.0
    assert aesthetic_from_predictor(5.5) == pytest.approx(0.5)
    assert aesthetic_from_predictor(12) == 1.0


@pytest.fixture(scope="module")
def tiny_scorer():
    return ClipScorer(load_scoring().get("tiny-clip"), env.cache_dir())


def test_planted_embeddings_give_known_scores(tiny_scorer, monkeypatch):
    text = unit(np.arange(1, tiny_scorer.embed_dim + 1))
    cosines = [0.35, 0.25, 0.15, -0.3]
    planted = torch.tensor(np.stack([with_cosine(text, c) for c in cosines]))
    monkeypatch.setattr(tiny_scorer, "encode_images", lambda images: planted)
    monkeypatch.setattr(tiny_scorer, "encode_texts", lambda prompts: [text for _ in prompts])
    items = [ScoreItem(generated(i, "m", i).png, "a red fox", 32, 32) for i in range(4)]
    scores = tiny_scorer.score(items)
    assert [round(s.detailed["prompt_alignment"], 4) for s in scores] == [1.0, 0.5, 0.0, 0.0]
    assert [s.details["clip"]["cosine"] for s in scores] == pytest.approx(cosines, abs=1e-5)
    for score in scores:
        assert score.detailed["aesthetic_appeal"] is None and "aesthetic_appeal" in score.unavailable
        expected = (0.3 * score.detailed["technical_quality"] + 0.4 * score.detailed["prompt_alignment"]
                    + 0.1 * (1 - score.detailed["generation_artifacts"])) / 0.8
        assert score.overall == pytest.approx(expected)
        assert score.scorer["weights"] == "random"


def test_text_embeddings_are_cached_per_prompt(tiny_scorer):
    before = tiny_scorer.text_encodes
    items = [ScoreItem(generated(i, "m", i).png, p, 32, 32) for i, p in enumerate(["fox", "owl", "fox"])]
    tiny_scorer.score(items)
    tiny_scorer.score(items)
    assert tiny_scorer.text_encodes - before <= 2


def test_aesthetic_predictor_on_vit_l14_sized_embeddings(tmp_path):
    import open_clip  # noqa: F401 - the model class below comes from it
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    from models.tiny import TINY_CLIP_CONFIG

    config = {**TINY_CLIP_CONFIG, "embed_dim": AESTHETIC_EMBED_DIM}
    folder = tmp_path / "clip768"
    folder.mkdir()
    torch.manual_seed(0)
    save_file(CLIP(**config).state_dict(), str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    head = aesthetic_mlp(torch)
    with torch.no_grad():
        for layer in head:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.zero_()
                layer.bias.zero_()
        head[-1].bias.fill_(7.3)  # every image rates 7.3 of 10
    weights = tmp_path / "aesthetic.pth"
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, weights)
    spec = ScorerSpec(id="t768", architecture=f"local-dir:{folder}", weights="random",
                      aesthetic_weights=str(weights))
    assert spec.missing_weights() is None
    scorer = ClipScorer(spec, tmp_path)
    (score,) = scorer.score([ScoreItem(generated(0, "m", 0).png, "a fox", 32, 32)])
    assert score.detailed["aesthetic_appeal"] == pytest.approx((7.3 - 1) / 9, abs=1e-4)
    assert score.details["aesthetic"]["rating_1_to_10"] == pytest.approx(7.3, abs=1e-3)
    assert score.unavailable == {}


def test_missing_clip_weights_fall_back_with_the_reason():
    scorer = make_scorer("vit-l-14", load_scoring(), [])
    assert isinstance(scorer, WeightFreeScorer)
    assert "huggingface-cli download laion/CLIP-ViT-L-14-laion2B-s32B-b82K" in scorer.describe()["note"]
    (score,) = scorer.score([generated(0, "m", 0)])
    assert score.detailed["prompt_alignment"] is None and "prompt_alignment" in score.unavailable


@pytest.mark.usefixtures("ray_session")
def test_the_scorer_actor_scores_a_batch(tiny_scorer):
    from cluster.placement import cluster_nodes

    scorer = ActorScorer(load_scoring().get("tiny-clip"), cluster_nodes())
    try:
        images = [generated(i, "m", i) for i in range(5)]
        scores = scorer.score(images)
        assert len(scores) == 5
        for s in scores:
            assert set(s.detailed) == {"technical_quality", "prompt_alignment", "aesthetic_appeal",
                                       "generation_artifacts"}
            assert 0.0 <= s.overall <= 1.0 and s.detailed["prompt_alignment"] is not None
        import ray

        assert ray.get(scorer.actor.stats.remote())["text_encodes"] == 1  # one prompt, encoded once
        assert scorer.describe()["weights"] == "random"
    finally:
        scorer.release()


@pytest.mark.usefixtures("ray_session")
def test_run_with_tiny_clip_writes_every_score(tmp_path):
    registry = scripted_registry(tmp_path, {
        "one": {"script": {"latency": 0.05}, "max_batch_size": 4},
        "two": {"script": {"latency": 0.3}, "max_batch_size": 4},
    })
    request = make_request(registry, tmp_path, models="one,two", image_count=2, seed=9, enable_comparison="true",
                           scorer="tiny-clip", quality_threshold="0.99")
    result = run_generation(request, registry, quick_limits())
    qa = read_json(tmp_path / "out/metadata/quality-analysis.json")
    assert qa["scorer"]["name"] == "tiny-clip" and qa["scorer"]["weights"] == "random"
    for entry in qa["images"]:
        assert entry["detailed_scores"]["prompt_alignment"] is not None
        assert entry["quality_tier"] and "technical" in entry["details"] and "clip" in entry["details"]
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert [i["quality_score"] for i in report["images"]] == [e["overall_score"] for e in qa["images"]]
    assert json.loads(result.outputs["quality-scores"]) == [i["quality_score"] for i in report["images"]]
    primary = report["generation_summary"]["primary_image_index"]
    assert primary == max(range(4), key=lambda i: report["images"][i]["quality_score"])
    # nothing reaches 0.99: Quality Relaxation, recorded
    assert report["quality"]["relaxed"] is True and all(i["below_threshold"] for i in report["images"])
    assert any(d["strategy"] == "quality_relaxation" for d in report["degradations"])
    # comparison mode: same seeds and prompt for both models; the comparison names all three winners
    seeds = {m: [i["seed"] for i in report["images"] if i["model_used"] == m] for m in ("one", "two")}
    assert seeds == {"one": [9, 10], "two": [9, 10]}
    comparison = report["model_comparison"]
    assert comparison["fastest_model"] == "one"
    assert comparison["best_quality_model"] in ("one", "two") and comparison["most_consistent_model"] in ("one", "two")
    table = (tmp_path / "out/metadata/model-comparison.md").read_text()
    assert "| one |" in table and "| two |" in table and "same seeds for every model" in table


@pytest.mark.usefixtures("ray_session")
def test_a_scorer_lost_mid_run_falls_back_and_says_why():
    from cluster.placement import cluster_nodes

    scorer = ActorScorer(load_scoring().get("tiny-clip"), cluster_nodes())
    assert scorer.describe()["name"] == "tiny-clip"  # loaded
    ray.kill(scorer.actor, no_restart=True)
    scores = scorer.score([generated(0, "m", 0)])
    assert scores[0].detailed["prompt_alignment"] is None and scores[0].detailed["technical_quality"] is not None
    assert "failed while scoring" in scorer.describe()["note"]
