"""A translator into English: a local seq2seq model (MarianMT, NLLB) through transformers, or a
Gemini text model through google-genai. Loaded once; no Ray here."""

from __future__ import annotations

import time
from pathlib import Path

from cluster import env
from cluster.errors import ImageGenError
from models.registry import parse_source
from models.translators import TranslatorSpec

# ISO 639-1 -> NLLB-200's language codes
NLLB_CODES = {"ja": "jpn_Jpan", "zh": "zho_Hans", "ko": "kor_Hang", "es": "spa_Latn", "fr": "fra_Latn",
              "de": "deu_Latn", "it": "ita_Latn", "pt": "por_Latn", "nl": "nld_Latn", "pl": "pol_Latn",
              "sv": "swe_Latn", "da": "dan_Latn", "no": "nob_Latn", "fi": "fin_Latn", "cs": "ces_Latn",
              "tr": "tur_Latn", "id": "ind_Latn", "vi": "vie_Latn", "ro": "ron_Latn", "ru": "rus_Cyrl",
              "ar": "arb_Arab", "hi": "hin_Deva", "th": "tha_Thai", "el": "ell_Grek", "he": "heb_Hebr"}
GEMINI_INSTRUCTION = ("Translate this image-generation prompt into English. Keep names, styles and details; "
                      "answer with the translation only.\n\n")


class Translator:
    def __init__(self, spec: TranslatorSpec, cache_root: Path, credentials: env.GoogleCredentials | None = None):
        started = time.perf_counter()
        self.spec = spec
        self.calls = 0
        if spec.backend == "gemini":
            from actors.core.google_generator import vertex_client

            creds = credentials if credentials is not None and credentials.present else env.google_credentials()
            if not creds.present:
                raise ImageGenError("IMG_030", f"translator {spec.id!r} needs Google credentials.")
            self._redact = creds.redact
            self.client = vertex_client(creds, spec.request_timeout_s, f"translator {spec.id!r}")
        else:
            import torch
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            location = self._location(cache_root)
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            self.tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
            self.model = AutoModelForSeq2SeqLM.from_pretrained(location, local_files_only=True).to(self.device).eval()
            self._torch = torch
        self.load_seconds = time.perf_counter() - started

    def _location(self, cache_root: Path) -> str:
        kind, value = parse_source(self.spec.source or "")
        if kind == "builtin":
            from models.tiny import tiny_translator_dir

            return str(tiny_translator_dir(cache_root))
        if kind == "local":
            return value
        from models.availability import hub_file

        found = hub_file(value, "config.json")
        if found is None:
            raise ImageGenError("IMG_030", self.spec.missing() or f"translator {self.spec.id!r} is not here.")
        return str(found.parent)

    def translate(self, text: str, language: str) -> str:
        """`text` (in `language`, ISO 639-1) in English."""
        self.calls += 1
        if self.spec.backend == "gemini":
            return self._gemini(text)
        torch = self._torch
        kwargs = {}
        if self.spec.style == "nllb":
            self.tokenizer.src_lang = NLLB_CODES.get(language, "eng_Latn")
            kwargs["forced_bos_token_id"] = self.tokenizer.convert_tokens_to_ids("eng_Latn")
        batch = self.tokenizer([text], return_tensors="pt", truncation=True).to(self.device)
        # never past the decoder's positions (a small model may have fewer than the spec's token cap)
        limit = min(self.spec.max_new_tokens, getattr(self.model.config, "max_position_embeddings", 1024) - 2)
        with torch.inference_mode():
            out = self.model.generate(**batch, max_new_tokens=limit, num_beams=1, do_sample=False, **kwargs)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)[0].strip()

    def _gemini(self, text: str) -> str:
        from actors.core.google_errors import classify

        try:
            response = self.client.models.generate_content(model=self.spec.api_model,
                                                            contents=GEMINI_INSTRUCTION + text)
        except Exception as exc:  # noqa: BLE001 - classified into the design card's codes
            raise classify(exc, self.spec.id, self._redact) from None
        answer = (response.text or "").strip()
        if not answer:
            raise ImageGenError("IMG_030", f"translator {self.spec.id!r} answered with no text.")
        return answer
