"""The CLIP scorer and the quality framework: planted embeddings, the actor, the reports."""

from __future__ import annotations

import io
import json
import time
import statistics

import numpy as np
import pytest
import ray
import torch
from PIL import Image

from actors.core.clip_scorer import AESTHETIC_EMBED_DIM, ClipScorer, ScoreItem, aesthetic_mlp
from cluster import env
from cluster.quality.score import aesthetic_from_predictor, alignment_from_clipscore, clip_score
from cluster.pipeline.run import run_generation
from cluster.engine.scoring import ActorScorer, WeightFreeScorer, make_scorer
from models.scorers import ScorerSpec, load_scoring
from models.hub_cli import hub_command
from tests.helpers import generated, make_request, outcome_for, quick_limits, read_json, scripted_registry


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


def reference_model(folder):
    """The open_clip model in `folder`, loaded by open_clip itself (not through ClipScorer)."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{folder}")


def reference_image_embeddings(folder, pngs) -> np.ndarray:
    model, preprocess, _ = reference_model(folder)
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.open(io.BytesIO(png)).convert("RGB")) for png in pngs])
        return torch.nn.functional.normalize(model.encode_image(pixels), dim=-1).numpy()


def reference_text_embeddings(folder, prompts) -> np.ndarray:
    model, _, tokenizer = reference_model(folder)
    with torch.no_grad():
        return torch.nn.functional.normalize(model.encode_text(tokenizer(prompts)), dim=-1).numpy()


def test_tiny_clip_scores_match_an_independent_open_clip_computation(tiny_scorer):
    from models.tiny import tiny_clip_dir

    prompts = ["a red fox in the snow", "an owl at night", "a blue car"]
    pngs = [generated(i, "m", 20 + i).png for i in range(3)]
    scores = tiny_scorer.score([ScoreItem(png, p, 32, 32) for png, p in zip(pngs, prompts)])
    folder = tiny_clip_dir(env.cache_dir())
    cosines = (reference_image_embeddings(folder, pngs) * reference_text_embeddings(folder, prompts)).sum(axis=1)
    assert len({round(float(c), 3) for c in cosines}) == 3  # distinct, so a mix-up of pairs shows
    assert [s.details["clip"]["cosine"] for s in scores] == pytest.approx(cosines.tolist(), abs=1e-5)
    for score, cosine in zip(scores, cosines):
        # calibration 0.15 -> 0, 0.35 -> 1 on CLIPScore 2.5 * max(cos, 0)
        assert score.details["clip"]["clip_score"] == pytest.approx(2.5 * max(float(cosine), 0.0), abs=1e-5)
        assert score.detailed["prompt_alignment"] == pytest.approx(
            min(1.0, max(0.0, (max(float(cosine), 0.0) - 0.15) / 0.20)), abs=1e-4)


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
    from models.tiny import tiny_clip_dir

    before = tiny_scorer.text_encodes
    prompts = ["a cached fox", "a cached owl", "a cached fox"]  # new to this scorer: two distinct
    items = [ScoreItem(generated(i, "m", i).png, p, 32, 32) for i, p in enumerate(prompts)]
    first = tiny_scorer.score(items)
    assert tiny_scorer.text_encodes - before == 2
    second = tiny_scorer.score(items)
    assert tiny_scorer.text_encodes - before == 2  # the second call encodes nothing
    assert [s.details["clip"]["cosine"] for s in second] == [s.details["clip"]["cosine"] for s in first]
    cached = np.stack(tiny_scorer.encode_texts(["a cached fox", "a cached owl"]))
    reference = reference_text_embeddings(tiny_clip_dir(env.cache_dir()), ["a cached fox", "a cached owl"])
    np.testing.assert_allclose(cached, reference, atol=1e-5)


def clip768(folder, seed: int):
    """A random-weight open_clip model with ViT-L/14's 768-d embeddings, as a local-dir model."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    from models.tiny import TINY_CLIP_CONFIG

    config = {**TINY_CLIP_CONFIG, "embed_dim": AESTHETIC_EMBED_DIM}
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    save_file({k: v.contiguous() for k, v in CLIP(**config).state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    return folder


def aesthetic_head_for(path, better: np.ndarray, worse: np.ndarray):
    """A predictor head (the LAION layer layout, random weights) with a strong preference along
    `better - worse` in the embedding it is meant for: those two images rate far apart there."""
    torch.manual_seed(1)
    head = aesthetic_mlp(torch)
    linears = [layer for layer in head if isinstance(layer, torch.nn.Linear)]
    direction = torch.tensor(better - worse, dtype=torch.float32)
    with torch.no_grad():
        linears[0].weight[0] = direction * 20.0 / float(direction.norm()) ** 2
        for layer in linears[1:]:
            layer.weight[0].zero_()
            layer.weight[0, 0] = 1.0
            layer.bias[0] = 0.0
        linears[0].bias[0] = 5.0
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, path)
    return path


def reference_ratings(head_path, embeddings: np.ndarray) -> np.ndarray:
    """The head's ratings by plain matrix products over its saved weights (dropout is off at
    inference, and the LAION head has no activations)."""
    state = torch.load(head_path, weights_only=True)
    x = embeddings.astype(np.float64)
    for index in (0, 2, 4, 6, 7):
        weight, bias = state[f"layers.{index}.weight"].double().numpy(), state[f"layers.{index}.bias"].double().numpy()
        x = x @ weight.T + bias
    return x[:, 0]


@pytest.fixture(scope="module")
def aesthetic_setup(tmp_path_factory):
    """Two 768-d models: `trained_on` (the head's) and `other` (a different one of the same size),
    two images, and a head that rates image 0 well above image 1 on `trained_on`'s embeddings."""
    root = tmp_path_factory.mktemp("aesthetic")
    trained_on, other = clip768(root / "trained-on", seed=0), clip768(root / "other", seed=5)
    pngs = [generated(0, "m", 3, size=64).png, generated(1, "m", 8, size=64).png]
    embeddings = reference_image_embeddings(trained_on, pngs)
    head = aesthetic_head_for(root / "aesthetic.pth", embeddings[0], embeddings[1])
    expected = reference_ratings(head, embeddings)
    assert expected[0] - expected[1] > 5  # the images are far apart for this head
    on_other = reference_ratings(head, reference_image_embeddings(other, pngs))
    assert abs(on_other[0] - on_other[1]) < 5  # ...and not on the other model's embeddings
    return {"trained_on": trained_on, "other": other, "pngs": pngs, "head": head, "expected": expected}


def aesthetic_spec(scorer_folder, embedding: dict | None, head) -> ScorerSpec:
    return ScorerSpec(id="t768", architecture=f"local-dir:{scorer_folder}", weights="random",
                      aesthetic_weights=str(head), aesthetic_embedding=embedding)


def rate(scorer: ClipScorer, pngs) -> list:
    return scorer.score([ScoreItem(png, "a fox", 64, 64) for png in pngs])


def test_aesthetic_from_the_scorers_own_embeddings_when_the_head_was_trained_on_them(aesthetic_setup, tmp_path):
    setup = aesthetic_setup
    own = {"architecture": f"local-dir:{setup['trained_on']}"}
    scorer = ClipScorer(aesthetic_spec(setup["trained_on"], own, setup["head"]), tmp_path)
    assert scorer._aesthetic_tower is None  # one model serves both: no second tower
    scores = rate(scorer, setup["pngs"])
    ratings = [s.details["aesthetic"]["rating_1_to_10"] for s in scores]
    assert ratings == pytest.approx(setup["expected"].tolist(), abs=1e-3)
    assert [s.detailed["aesthetic_appeal"] for s in scores] == pytest.approx(
        [min(1.0, max(0.0, (r - 1) / 9)) for r in setup["expected"]], abs=1e-4)
    assert scores[0].detailed["aesthetic_appeal"] > scores[1].detailed["aesthetic_appeal"]
    assert all(s.unavailable == {} for s in scores)


def test_aesthetic_reads_the_embedding_model_it_was_trained_on_not_the_scorers(aesthetic_setup, tmp_path):
    # The scorer's model has embeddings of the same size as the head's, but not the head's model:
    # the ratings must come from a second image tower of the model the head was trained on.
    setup = aesthetic_setup
    embedding = {"architecture": f"local-dir:{setup['trained_on']}"}
    scorer = ClipScorer(aesthetic_spec(setup["other"], embedding, setup["head"]), tmp_path)
    assert scorer._aesthetic_tower is not None
    scores = rate(scorer, setup["pngs"])
    ratings = [s.details["aesthetic"]["rating_1_to_10"] for s in scores]
    assert ratings == pytest.approx(setup["expected"].tolist(), abs=1e-3)
    assert ratings[0] - ratings[1] > 5
    assert scorer.describe()["aesthetic_embedding"] == f"local-dir:{setup['trained_on']}"
    # the prompt alignment still comes from the scorer's own model
    cosine = (reference_image_embeddings(setup["other"], setup["pngs"][:1])
              * reference_text_embeddings(setup["other"], ["a fox"])).sum()
    assert scores[0].details["clip"]["cosine"] == pytest.approx(float(cosine), abs=1e-5)


def test_a_smaller_scorer_gets_aesthetics_from_the_heads_model(aesthetic_setup, tmp_path):
    setup = aesthetic_setup
    spec = ScorerSpec(id="tiny-with-head", architecture="builtin:tiny-clip", weights="random",
                      aesthetic_weights=str(setup["head"]),
                      aesthetic_embedding={"architecture": f"local-dir:{setup['trained_on']}"})
    scores = rate(ClipScorer(spec, env.cache_dir()), setup["pngs"])
    assert [s.details["aesthetic"]["rating_1_to_10"] for s in scores] == pytest.approx(
        setup["expected"].tolist(), abs=1e-3)


@pytest.mark.parametrize("embedding, reason", [
    (None, "does not say which CLIP model it was trained on"),
    ({"architecture": "ViT-L-14", "pretrained": "openai", "hub_repo": "timm/vit_large_patch14_clip_224.openai"},
     f"`{hub_command()} download timm/vit_large_patch14_clip_224.openai open_clip_model.safetensors`"),
])
def test_no_aesthetic_score_without_the_embedding_it_was_trained_on(aesthetic_setup, tmp_path, embedding, reason):
    setup = aesthetic_setup
    spec = aesthetic_spec(setup["other"], embedding, setup["head"])
    assert reason in spec.missing_aesthetic()
    scores = rate(ClipScorer(spec, tmp_path), setup["pngs"])
    for score in scores:
        assert score.detailed["aesthetic_appeal"] is None and "aesthetic" not in score.details
        assert reason in score.unavailable["aesthetic_appeal"]
        assert score.detailed["prompt_alignment"] is not None  # the CLIP scores stand


def test_the_bundled_aesthetic_head_is_declared_on_openai_vit_l14(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants
    from open_clip.constants import OPENAI_DATASET_MEAN

    from actors.core.clip_scorer import open_clip_args

    spec = load_scoring().get("vit-l-14")
    emb = spec.aesthetic_embedding
    assert (emb.architecture, emb.pretrained, emb.hub_repo) == (
        "ViT-L-14", "openai", "timm/vit_large_patch14_clip_224.openai")
    assert not spec.aesthetic_on_own_embeddings  # the scorer itself is laion2b
    # Read from the cache as files: OpenAI's weights need QuickGELU and OpenAI's normalisation,
    # which open_clip 3 does not apply to `ViT-L-14` on its own.
    hub = tmp_path / "hub"
    for repo in ("timm/vit_large_patch14_clip_224.openai", "laion/CLIP-ViT-L-14-laion2B-s32B-b82K"):
        folder = hub / f"models--{repo.replace('/', '--')}"
        (folder / "snapshots" / "c0ffee").mkdir(parents=True)
        (folder / "snapshots" / "c0ffee" / "open_clip_model.safetensors").write_bytes(b"w")
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text("c0ffee")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub))
    name, kwargs = open_clip_args(emb.architecture, emb.pretrained, emb.hub_repo, tmp_path)
    assert name == "ViT-L-14" and kwargs["pretrained"].endswith("open_clip_model.safetensors")
    assert kwargs["force_quick_gelu"] is True and tuple(kwargs["image_mean"]) == tuple(OPENAI_DATASET_MEAN)
    _, kwargs = open_clip_args(spec.architecture, spec.pretrained, spec.hub_repo, tmp_path)
    assert kwargs["force_quick_gelu"] is False and tuple(kwargs["image_mean"]) == (0.5, 0.5, 0.5)


def test_missing_clip_weights_fall_back_with_the_reason():
    scorer = make_scorer("vit-l-14", load_scoring(), [])
    assert isinstance(scorer, WeightFreeScorer)
    assert f"{hub_command()} download laion/CLIP-ViT-L-14-laion2B-s32B-b82K" in scorer.describe()["note"]
    (score,) = scorer.score([generated(0, "m", 0)])
    assert score.detailed["prompt_alignment"] is None and "prompt_alignment" in score.unavailable


@pytest.mark.usefixtures("ray_session")
def test_the_scorer_actor_scores_a_batch(tiny_scorer):
    from cluster.engine.nodes import cluster_nodes

    scorer = ActorScorer(load_scoring().get("tiny-clip"), cluster_nodes())
    try:
        images = [generated(i, "m", i) for i in range(5)]
        scores = scorer.score(images)
        # the actor runs the same tiny weights as the scorer in this process: the same numbers
        local = tiny_scorer.score([ScoreItem(i.png, i.task.prompt, i.width, i.height) for i in images])
        assert [s.overall for s in scores] == pytest.approx([s.overall for s in local], abs=1e-6)
        assert [s.details["clip"]["cosine"] for s in scores] == [s.details["clip"]["cosine"] for s in local]
        assert len({round(s.overall, 4) for s in scores}) == 5
        for s in scores:
            assert set(s.detailed) == {"technical_quality", "prompt_alignment", "aesthetic_appeal",
                                       "generation_artifacts"}
        import ray

        assert ray.get(scorer.actor.stats.remote())["text_encodes"] == 1  # one prompt, encoded once
        assert scorer.describe()["weights"] == "random"
    finally:
        scorer.release()


@pytest.mark.usefixtures("ray_session")
def test_run_with_tiny_clip_writes_every_score(tmp_path):
    registry = scripted_registry(tmp_path, {
        "one": {"script": {"latency": 0.05}, "max_batch_size": 4},
        # blurred images: the two models' scores differ, so the comparison has a real winner
        "two": {"script": {"latency": 0.3, "sharp_variations": []}, "max_batch_size": 4},
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
    by_model = {m: [i["quality_score"] for i in report["images"] if i["model_used"] == m] for m in ("one", "two")}
    means = {m: statistics.fmean(v) for m, v in by_model.items()}
    assert means["one"] - means["two"] > 0.05  # "two" blurs every image
    assert comparison["best_quality_model"] == "one"
    for model in ("one", "two"):
        assert comparison["per_model"][model]["mean_quality"] == pytest.approx(means[model], abs=2e-4)
        assert comparison["per_model"][model]["quality_spread"] == pytest.approx(
            statistics.pstdev(by_model[model]), abs=2e-4)
    table = (tmp_path / "out/metadata/model-comparison.md").read_text()
    assert "| one |" in table and "| two |" in table and "same seeds for every model" in table


def test_the_comparison_names_the_best_and_the_most_consistent_model(registry, tmp_path):
    from cluster.output.report import model_comparison

    request = make_request(registry, tmp_path, models="tiny-flux")  # the models below are only names
    planted = {"steady": [0.60, 0.61, 0.62], "best": [0.70, 0.95, 0.80], "erratic": [0.20, 0.90, 0.50]}
    images = [generated(i, model, i) for i, model in enumerate(m for m in planted for _ in range(3))]
    outcome = outcome_for(request, images)
    for final in outcome.images:
        final.quality.overall = planted[final.model].pop(0)
    comparison = model_comparison(outcome)
    assert comparison["best_quality_model"] == "best"  # highest mean, though not the steadiest
    assert comparison["most_consistent_model"] == "steady"
    assert comparison["per_model"]["erratic"]["quality_spread"] == pytest.approx(
        statistics.pstdev([0.20, 0.90, 0.50]), abs=1e-4)


@pytest.mark.usefixtures("ray_session")
def test_a_scorer_lost_mid_run_falls_back_and_says_why():
    from cluster.engine.nodes import cluster_nodes

    scorer = ActorScorer(load_scoring().get("tiny-clip"), cluster_nodes())
    assert scorer.describe()["name"] == "tiny-clip"  # loaded
    ray.kill(scorer.actor, no_restart=True)
    with pytest.raises(ray.exceptions.RayActorError):  # the kill is asynchronous: wait until it is dead
        for _ in range(50):
            ray.get(scorer.actor.stats.remote(), timeout=10)
            time.sleep(0.1)
    scores = scorer.score([generated(0, "m", 0)])
    assert scores[0].detailed["prompt_alignment"] is None and scores[0].detailed["technical_quality"] is not None
    assert "failed while scoring" in scorer.describe()["note"]
