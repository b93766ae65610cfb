"""How long a prompt may be, and what of it each model reads.

A model reads its prompt through text encoders, each up to a number of tokens
(`ModelSpec.prompt_encoders`: FLUX's CLIP-L 77 and T5-XXL its max_sequence_length, Imagen 480,
Gemini 32,768); each cuts what lies beyond. A request may carry the longest prompt a configured
model reads (never less than the 2,000 characters accepted before); what an encoder cuts is
recorded per image and model, not refused.

Counting is exact where the tokenizer is loaded: on a replica, with its pipeline's own tokenizers
(`PromptReader`). Anywhere else (the driver, remote models) it is estimated from the prompt's
length: the driver never loads a tokenizer. Pure: no torch, no Ray.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from models.registry import ModelSpec, PromptEncoder

# Characters of English prose one token covers: CLIP's BPE reads 4.4 on this project's docs and
# 4.7 on a typical prompt (measured with open_clip's vocabulary, CLIP-L's); OpenAI's rule of thumb
# is 4. Estimates divide UTF-8 bytes by it, so a script of three bytes a character (CJK, about a
# token a character) is not under-counted threefold.
CHARS_PER_TOKEN = 4
# Accepted whatever the registry holds (the limit before it was derived from the models)
PROMPT_CHARS_FLOOR = 2000
# Words of context that say where an encoder stopped reading
READ_UNTIL_TOKENS = 8


def max_prompt_chars(specs: Iterable[ModelSpec]) -> int:
    """The longest prompt a request may carry: what the longest reader of `specs` reads, in
    characters of English, and at least PROMPT_CHARS_FLOOR."""
    tokens = max((spec.prompt_tokens or 0 for spec in specs), default=0)
    return max(PROMPT_CHARS_FLOOR, tokens * CHARS_PER_TOKEN)


def estimated_tokens(prompt: str) -> int:
    return math.ceil(len(prompt.encode("utf-8")) / CHARS_PER_TOKEN)


def truncations(encoders: Iterable[PromptEncoder], prompt: str, tokenizers: Mapping[str, Any] | None = None) -> list[dict]:
    """What each encoder cuts of `prompt` ([] when all read it whole): counted by its tokenizer
    where `tokenizers` has it (by the encoder's `tokenizer` name), else estimated."""
    cuts = []
    for encoder in encoders:
        tokenizer = (tokenizers or {}).get(encoder.tokenizer or "")
        cut = _counted(encoder, prompt, tokenizer) if tokenizer is not None else _estimated(encoder, prompt)
        if cut is not None:
            cuts.append(cut)
    return cuts


def _estimated(encoder: PromptEncoder, prompt: str) -> dict | None:
    tokens = estimated_tokens(prompt)
    if tokens <= encoder.max_tokens:
        return None
    return {"encoder": encoder.name, "max_tokens": encoder.max_tokens, "tokens": tokens, "counted": "estimate"}


def _counted(encoder: PromptEncoder, prompt: str, tokenizer) -> dict | None:
    """Tokens as the encoder's tokenizer makes them, its special tokens (CLIP's start and end, T5's
    end) included, as the pipeline counts them when it cuts at `max_tokens`."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    special = tokenizer.num_special_tokens_to_add()
    if len(ids) + special <= encoder.max_tokens:
        return None
    kept = max(0, encoder.max_tokens - special)
    read_until = tokenizer.decode(ids[max(0, kept - READ_UNTIL_TOKENS):kept], skip_special_tokens=True)
    return {"encoder": encoder.name, "max_tokens": encoder.max_tokens, "tokens": len(ids) + special,
            "counted": "tokenizer", "read_until": " ".join(read_until.split())}


class PromptReader:
    """What a loaded pipeline's encoders cut of each prompt, counted by the pipeline's own
    tokenizers (the ones its encoders read with); the last `cache` prompts are remembered."""

    def __init__(self, encoders: Iterable[PromptEncoder], pipe: Any, cache: int = 64):
        self.encoders = tuple(encoders)
        self.tokenizers = {e.tokenizer: getattr(pipe, e.tokenizer) for e in self.encoders
                           if e.tokenizer and getattr(pipe, e.tokenizer, None) is not None}
        self._cache: OrderedDict[str, list[dict]] = OrderedDict()
        self._size = cache

    def __call__(self, prompt: str) -> list[dict]:
        if prompt not in self._cache:
            self._cache[prompt] = truncations(self.encoders, prompt, self.tokenizers)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(prompt)
        return [dict(cut) for cut in self._cache[prompt]]


def describe(model: str, cuts: list[dict]) -> str:
    """`flux-schnell reads 77 of 143 tokens (CLIP-L) and 256 of 301 (T5-XXL)`, `about` for estimates."""
    parts = [f"{c['max_tokens']} of {'about ' if c['counted'] == 'estimate' else ''}{c['tokens']}"
             f"{' tokens' if i == 0 else ''} ({c['encoder']})" for i, c in enumerate(cuts)]
    return f"{model} reads {' and '.join(parts)}"
