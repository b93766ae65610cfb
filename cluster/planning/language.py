"""What language a prompt is in, offline. Pure.

Scripts decide what they can: kana is Japanese, hangul Korean, Han without kana Chinese, and so on.
Latin-script text goes to py3langid (a compact model shipped inside the package), restricted to
Latin-script languages; text too short for a model to judge ("neon street") is taken as English,
and so is plain ASCII text that uses English function words ("the", "of", "with", ...) and none of
another Latin-script language's: most prompts are English, and loading py3langid's model costs more
than half a second, so it is loaded (once per process) only for text that can be something else.
A prompt with both a non-Latin script and a run of Latin words ("a neon street in 渋谷") is mixed.
`localise` gives each task the prompt its model reads (the translation stage decides the English).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, replace

from cluster.work import ImageTask
from models.registry import ModelSpec

LATIN_LANGUAGES = ["en", "es", "fr", "de", "it", "pt", "nl", "pl", "sv", "da", "no", "fi", "cs", "tr", "id", "vi", "ro"]
# Latin text this short (in letters) with no accents is not worth a model's guess
SHORT_LATIN = 24
WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
# Function words of English that are no word of the other LATIN_LANGUAGES: ASCII text with one of
# these and none of FOREIGN_WORDS is English without asking a model.
ENGLISH_WORDS = frozenset("the of and with from this that into its their while through beneath behind above near "
                          "at".split())
# Function words of the other LATIN_LANGUAGES (not English words too): one of them sends the text to
# py3langid. Generous on purpose: a word too many here costs a model load, never a wrong answer.
FOREIGN_WORDS = frozenset(
    "el la los las del y en con una un por para que su al sobre entre muy "  # es
    "le les des du et une avec dans sur pour au aux est sous par qui "  # fr
    "der das und ein eine einem einer mit im auf zu dem ist von bei unter nicht "  # de
    "il lo gli di e nel nella sul della che per tra fra "  # it
    "o os um uma com em na da dos das ao "  # pt
    "het een van op voor naar bij onder zijn niet de met "  # nl
    "w z na ze od dla przy nad pod "  # pl
    "och ett av som vid till "  # sv
    "og af er det ved paa "  # da, no
    "ja ei se ovat joka kanssa "  # fi
    "v je ve "  # cs
    "bir ve ile bu icin gibi "  # tr
    "yang dan dengan ini itu ke dari pada untuk sebuah seorang "  # id
    "va cua mot nhung voi trong tren "  # vi
    "si cu pe din este sau unei".split())  # ro


@dataclass(frozen=True)
class Detection:
    language: str  # an ISO 639-1 code, or "mixed"
    languages: tuple[str, ...] = ()  # every language found, main first
    method: str = ""

    @property
    def english(self) -> bool:
        return self.language == "en"

    def as_dict(self) -> dict:
        return {"language": self.language, "languages": list(self.languages), "method": self.method}


def _script(char: str) -> str:
    code = ord(char)
    if 0x3040 <= code <= 0x30FF or 0x31F0 <= code <= 0x31FF or 0xFF66 <= code <= 0xFF9D:
        return "kana"
    if 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F:
        return "hangul"
    if 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF:
        return "han"
    name = unicodedata.name(char, "")
    for script in ("LATIN", "CYRILLIC", "ARABIC", "DEVANAGARI", "THAI", "GREEK", "HEBREW"):
        if name.startswith(script):
            return script.lower()
    return "other"


SCRIPT_LANGUAGE = {"hangul": "ko", "cyrillic": "ru", "arabic": "ar", "devanagari": "hi", "thai": "th", "greek": "el",
                   "hebrew": "he"}


def detect(text: str) -> Detection:
    counts: dict[str, int] = {}
    for char in text:
        if char.isalpha():
            script = _script(char)
            counts[script] = counts.get(script, 0) + 1
    if not counts:
        return Detection("en", ("en",), "no letters: taken as English")
    foreign = None
    if counts.get("kana"):
        foreign = "ja"
    elif counts.get("han"):
        foreign = "zh"
    else:
        for script, language in SCRIPT_LANGUAGE.items():
            if counts.get(script):
                foreign = language
                break
    latin = counts.get("latin", 0)
    latin_words = [w for w in WORD.findall(text) if all(_script(c) == "latin" for c in w)]
    if foreign is None:
        return _latin(text, latin_words)
    if latin >= 4 and len(latin_words) >= 2:
        latin_language = _latin(" ".join(latin_words), latin_words).language
        return Detection("mixed", (foreign, latin_language), f"{_method(foreign)} and Latin words")
    return Detection(foreign, (foreign,), _method(foreign))


def _method(language: str) -> str:
    return {"ja": "script: kana", "zh": "script: Han without kana", "ko": "script: hangul"}.get(
        language, f"script ({language})")


def _latin(text: str, words: list[str]) -> Detection:
    letters = sum(len(w) for w in words)
    if letters < SHORT_LATIN and text.isascii():
        return Detection("en", ("en",), "short Latin text without accents: taken as English")
    if plainly_english(text, words):
        return Detection("en", ("en",), "ASCII text with English function words and no other language's")
    language, probability = _identifier().classify(text)
    if probability < 0.45:
        return Detection("en", ("en",), f"Latin text, no language sure ({language} at {probability:.2f}): taken as English")
    return Detection(language, (language,), f"py3langid ({probability:.2f})")


def plainly_english(text: str, words: list[str]) -> bool:
    """ASCII text with an English function word and none of another Latin-script language's."""
    if not text.isascii():
        return False
    lowered = {w.lower() for w in words}
    return bool(lowered & ENGLISH_WORDS) and not lowered & FOREIGN_WORDS


_IDENTIFIER = None


def _identifier():
    """py3langid's model with normalised probabilities, restricted to Latin-script languages (loaded once)."""
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from py3langid import langid

        identifier = langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)
        identifier.set_languages(LATIN_LANGUAGES)
        _IDENTIFIER = identifier
    return _IDENTIFIER


def warm_up() -> None:
    """Load the identifier now (a long-lived process, once), not in its first request's time."""
    _identifier()


def needs_translation(detection: Detection, model_languages: tuple[str, ...]) -> bool:
    """Whether a model that handles `model_languages` should get an English translation."""
    if detection.english:
        return False
    return any(language not in model_languages for language in detection.languages)


def localise(task: ImageTask, translation: dict | None, spec: ModelSpec) -> ImageTask:
    """`task` with the prompt `spec` reads (the original, or its English translation) and a record of
    both; `translation`: the run's (the translation stage's `as_dict()`), None for an English prompt."""
    if not translation:
        return task
    detection = Detection(translation["language"], tuple(translation["languages"]))
    translated = bool(translation["english"]) and needs_translation(detection, spec.prompt_languages)
    return replace(task, prompt=translation["english"] if translated else translation["original"],
                   original_prompt=translation["original"], language=translation["language"],
                   translator=translation["translator"] or "" if translated else "",
                   english_prompt=translation["english"] or translation["original"])
