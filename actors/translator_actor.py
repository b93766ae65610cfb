"""The Ray actor around `Translator`: loaded once, every translation cached, so a warm cluster
translates each distinct prompt once however many runs ask."""

from __future__ import annotations

import threading
from pathlib import Path

import ray

from actors.core.translator import Translator
from models.translators import TranslatorSpec


class TranslatorWorker:
    def __init__(self, spec: TranslatorSpec, cache_root: str, credentials=None):
        self.spec = spec
        self.cache_root = Path(cache_root)
        self.credentials = credentials
        self.translator: Translator | None = None
        self._cache: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def load(self) -> dict:
        with self._lock:
            if self.translator is None:
                self.translator = Translator(self.spec, self.cache_root, self.credentials)
        return {"translator": self.spec.id, "load_seconds": round(self.translator.load_seconds, 3)}

    def translate(self, text: str, language: str) -> dict:
        self.load()
        key = (text, language)
        cached = key in self._cache
        if not cached:
            self._cache[key] = self.translator.translate(text, language)
        return {"text": self._cache[key], "cached": cached}

    def stats(self) -> dict:
        return {"translations": self.translator.calls if self.translator else 0, "cached_prompts": len(self._cache)}


TranslatorActor = ray.remote(num_cpus=0.5, max_restarts=1)(TranslatorWorker)
