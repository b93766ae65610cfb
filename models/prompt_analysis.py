"""What a prompt asks for, as the smart strategy needs it: realism or art.

A keyword reading, deliberately simple and inspectable: the report records which
words decided. English and Japanese cues, since the workflow's prompts come in both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

REALISM_CUES = (
    "photo", "photograph", "photography", "photorealistic", "photo-realistic", "realistic", "realism",
    "hyperrealistic", "dslr", "35mm", "50mm", "85mm", "lens", "bokeh", "portrait", "headshot",
    "raw photo", "film grain", "cinematic still", "documentary", "street photography", "product shot",
    "studio lighting", "golden hour", "depth of field", "f/1.8", "canon", "nikon", "sony a7",
    "写真", "リアル", "実写", "ポートレート", "フォト",
)
ARTISTIC_CUES = (
    "painting", "painted", "illustration", "illustrated", "watercolor", "watercolour", "oil painting",
    "acrylic", "sketch", "drawing", "anime", "manga", "cartoon", "comic", "pixel art", "digital art",
    "concept art", "surreal", "surrealism", "abstract", "impressionist", "impressionism", "cubism",
    "art nouveau", "ukiyo-e", "in the style of", "stylized", "stylised", "fantasy art", "low poly",
    "vaporwave", "psychedelic", "album cover", "poster", "storybook", "pastel",
    "イラスト", "アニメ", "水彩", "油絵", "漫画", "絵画", "抽象", "幻想",
)


@dataclass(frozen=True)
class PromptAnalysis:
    requires_realism: bool
    is_artistic: bool
    realism_cues: tuple[str, ...] = field(default=())
    artistic_cues: tuple[str, ...] = field(default=())

    @property
    def category(self) -> str:
        if self.requires_realism and (not self.is_artistic or len(self.realism_cues) > len(self.artistic_cues)):
            return "realism"
        if self.is_artistic:
            return "artistic"
        return "general"

    def as_dict(self) -> dict:
        return {
            "category": self.category,
            "requires_realism": self.requires_realism,
            "is_artistic": self.is_artistic,
            "realism_cues": list(self.realism_cues),
            "artistic_cues": list(self.artistic_cues),
        }


def _matches(prompt: str, cues: tuple[str, ...]) -> tuple[str, ...]:
    text = prompt.lower()
    found = []
    for cue in cues:
        if cue.isascii():
            # whole words only: "art" must not match "party", "lens" not "lenses'" prefix games
            if re.search(r"(?<![a-z0-9])" + re.escape(cue) + r"(?![a-z0-9])", text):
                found.append(cue)
        elif cue in prompt:
            found.append(cue)
    return tuple(found)


def analyze_prompt(prompt: str) -> PromptAnalysis:
    realism = _matches(prompt, REALISM_CUES)
    artistic = _matches(prompt, ARTISTIC_CUES)
    return PromptAnalysis(bool(realism), bool(artistic), realism, artistic)
