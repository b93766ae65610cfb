"""The CLIP scorer: an open_clip model loaded once, scoring whole batches. No Ray in here.

One call scores a batch: every image through the vision tower in one forward pass (in
chunks of `batch_size`), prompts through the text tower once each (cached per prompt for
the scorer's life), then the four scores of the design card per image.

The aesthetic head rates the image embeddings of the CLIP model it was trained on
(`aesthetic_embedding`): this scorer's own when that is the same model, else a second image
tower loaded beside it; when that model's weights are not here the aesthetic score is
unavailable with the reason. Weights are only ever read from disk (the Hugging Face cache).
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cluster.quality.image_metrics import generation_artifacts, technical_quality
from cluster.quality.score import QualityScore, aesthetic_from_predictor, alignment_from_clipscore, clip_score, make_score
from models.registry import BUILTIN_PREFIX
from models.scorers import ScorerSpec, cached_open_clip_file, missing_open_clip

AESTHETIC_EMBED_DIM = 768  # the LAION predictor was trained on ViT-L/14 image embeddings


@dataclass(frozen=True)
class ScoreItem:
    """One image to score: its PNG, the prompt it was made for, the size that was asked for."""

    png: bytes
    prompt: str
    width: int
    height: int
    nonfinite_fraction: float = 0.0


def aesthetic_mlp(torch):
    """The improved-aesthetic-predictor head (christophschuhmann/improved-aesthetic-predictor)."""
    nn = torch.nn
    return nn.Sequential(
        nn.Linear(AESTHETIC_EMBED_DIM, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
    )


def open_clip_args(architecture: str, pretrained: str | None, hub_repo: str | None,
                   cache_root: Path) -> tuple[str, dict]:
    """(model name, keyword arguments of `open_clip.create_model_and_transforms`) that load the model
    from local files only. A pretrained tag is read from the Hugging Face cache as a file, with the
    preprocessing and activation the tag was trained with: open_clip 3 builds `ViT-L-14` with GELU
    even for the `openai` tag (it only warns), and OpenAI's weights need QuickGELU."""
    if architecture == f"{BUILTIN_PREFIX}tiny-clip":
        from models.tiny import tiny_clip_dir

        return f"local-dir:{tiny_clip_dir(cache_root)}", {}
    if architecture.startswith("local-dir:"):
        return architecture, {}
    import open_clip

    tag = open_clip.get_pretrained_cfg(architecture, pretrained) if pretrained else {}
    if not tag:
        return architecture, {"pretrained": pretrained}
    weights = cached_open_clip_file(hub_repo) if hub_repo else None
    if weights is None:
        raise FileNotFoundError(missing_open_clip(architecture, pretrained, hub_repo) or f"{architecture}/{pretrained}")
    return architecture, {
        "pretrained": str(weights), "force_quick_gelu": bool(tag.get("quick_gelu")),
        "image_mean": tag.get("mean"), "image_std": tag.get("std"),
        "image_interpolation": tag.get("interpolation"), "image_resize_mode": tag.get("resize_mode"),
    }


class ClipScorer:
    def __init__(self, spec: ScorerSpec, cache_root: Path):
        import open_clip
        import torch

        started = time.perf_counter()
        self.spec = spec
        self._torch = torch
        self._lock = threading.Lock()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        name, kwargs = open_clip_args(spec.architecture, spec.pretrained, spec.hub_repo, cache_root)
        self._precision = "fp16" if self.device == "cuda" else "fp32"
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            name, precision=self._precision, device=self.device, **kwargs)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        self._text_cache: dict[str, np.ndarray] = {}
        self.text_encodes = 0  # prompts sent through the text tower (the cache's tests read it)
        self.embed_dim = int(self.model.text_projection.shape[1]) if getattr(self.model, "text_projection", None) is not None \
            else int(self.encode_texts(["probe"])[0].shape[0])
        # (image tower, its preprocessing) the aesthetic head reads; None: this scorer's own
        self._aesthetic_tower = None
        self.aesthetic, self.aesthetic_reason = self._load_aesthetic(cache_root)
        self.load_seconds = time.perf_counter() - started

    def _load_aesthetic(self, cache_root: Path):
        reason = self.spec.missing_aesthetic()
        if reason:
            return None, reason
        emb = self.spec.aesthetic_embedding
        dim = self.embed_dim
        if not self.spec.aesthetic_on_own_embeddings:
            import open_clip

            try:
                name, kwargs = open_clip_args(emb.architecture, emb.pretrained, emb.hub_repo, cache_root)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name, precision=self._precision, device=self.device, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the CLIP scores stand without the aesthetic one
                return None, f"the aesthetic predictor's embedding model {emb.label} did not load: {type(exc).__name__}: {exc}"
            # Only the image tower is kept: the head never reads text.
            self._aesthetic_tower = (model.visual.eval(), preprocess)
            dim = int(model.visual.output_dim)
            del model
        if dim != AESTHETIC_EMBED_DIM:
            self._aesthetic_tower = None
            return None, (f"the aesthetic predictor reads {AESTHETIC_EMBED_DIM}-d image embeddings; "
                          f"{emb.label} gives {dim}")
        torch = self._torch
        head = aesthetic_mlp(torch)
        state = torch.load(str(Path(self.spec.aesthetic_weights).expanduser()), map_location="cpu", weights_only=True)
        state = {k.removeprefix("layers."): v for k, v in state.items()}
        head.load_state_dict(state)
        return head.to(self.device).eval(), None

    def describe(self) -> dict:
        return {"name": self.spec.id, "architecture": self.spec.architecture, "pretrained": self.spec.pretrained,
                "weights": self.spec.weights, "device": self.device,
                "aesthetic": None if self.aesthetic is None else self.spec.aesthetic_weights,
                "aesthetic_embedding": None if self.aesthetic is None else self.spec.aesthetic_embedding.label,
                "calibration": self.spec.calibration.model_dump()}

    def encode_texts(self, prompts: list[str]) -> list[np.ndarray]:
        torch = self._torch
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            with torch.inference_mode():
                tokens = self.tokenizer(missing).to(self.device)
                features = self.model.encode_text(tokens).float()
                features = torch.nn.functional.normalize(features, dim=-1).cpu().numpy()
            for prompt, vector in zip(missing, features):
                self._text_cache[prompt] = vector
            self.text_encodes += len(missing)
        return [self._text_cache[p] for p in prompts]

    def encode_images(self, images, tower=None):
        """Normalised image embeddings (a tensor on the scorer's device), one forward pass per chunk;
        `tower`: (image tower, preprocessing) of another model instead of this scorer's."""
        torch = self._torch
        encode, preprocess = tower if tower is not None else (self.model.encode_image, self.preprocess)
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.spec.batch_size):
                chunk = images[start:start + self.spec.batch_size]
                pixels = torch.stack([preprocess(image) for image in chunk]).to(self.device)
                if self.device == "cuda":
                    pixels = pixels.half()
                features = encode(pixels).float()
                out.append(torch.nn.functional.normalize(features, dim=-1))
            return torch.cat(out)

    def score(self, items: list[ScoreItem]) -> list[QualityScore]:
        from PIL import Image

        with self._lock:
            images = []
            for item in items:
                with Image.open(io.BytesIO(item.png)) as image:
                    images.append(image.convert("RGB"))
            image_features = self.encode_images(images)
            text_emb = np.stack(self.encode_texts([item.prompt for item in items]))
            cosines = (image_features.cpu().numpy() * text_emb).sum(axis=1)
            ratings = None
            if self.aesthetic is not None:
                aesthetic_features = image_features if self._aesthetic_tower is None \
                    else self.encode_images(images, self._aesthetic_tower)
                with self._torch.inference_mode():
                    ratings = self.aesthetic(aesthetic_features).squeeze(-1).cpu().numpy()
            return [self._combine(item, image, float(cos), None if ratings is None else float(ratings[i]))
                    for i, (item, image, cos) in enumerate(zip(items, images, cosines))]

    def _combine(self, item: ScoreItem, image, cosine: float, rating: float | None) -> QualityScore:
        rgb = np.asarray(image)
        tech = technical_quality(rgb, (item.width, item.height))
        art = generation_artifacts(rgb, item.nonfinite_fraction)
        cal = self.spec.calibration
        raw = clip_score(cosine)
        detailed = {
            "technical_quality": tech.technical_quality,
            "prompt_alignment": alignment_from_clipscore(raw, cal.cos_low, cal.cos_high),
            "aesthetic_appeal": None if rating is None else aesthetic_from_predictor(rating),
            "generation_artifacts": art.generation_artifacts,
        }
        unavailable = {} if rating is not None else {"aesthetic_appeal": self.aesthetic_reason or "unavailable"}
        details = {
            "technical": tech.as_dict(),
            "artifacts": art.as_dict(),
            "clip": {"cosine": round(cosine, 6), "clip_score": round(raw, 6)},
        }
        if rating is not None:
            details["aesthetic"] = {"rating_1_to_10": round(rating, 4)}
        return make_score(detailed, unavailable, details, self.describe())
