"""Translation on Ray, for the run's translate stage (cluster.pipeline.stages.translate): the prompt
is detected and, for the models whose text encoders do not read its language, translated once by a
translator actor (kept warm like the model replicas).

A missing translator (weights absent, no credentials) or a failed translation is a warning with
its reason, and the original prompt passes through; `--translate required` makes either an
IMG_030 error before anything is made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cluster import env
from cluster.errors import ImageGenError, as_image_error, describe_exception
from cluster.observability.events import Events
from cluster.planning.language import Detection, detect, needs_translation
from models.translators import TranslationConfig, TranslatorSpec

TRANSLATE_TIMEOUT_S = 300.0


@dataclass
class PromptTranslation:
    original: str
    detection: Detection
    english: str | None = None
    translator: str | None = None
    cached: bool = False
    note: str = ""
    models: list[str] = field(default_factory=list)  # the models that receive the translation

    def for_model(self, spec) -> str:
        """The prompt `spec` receives: the translation when its text encoders need one and there is one."""
        if self.english and needs_translation(self.detection, spec.prompt_languages):
            return self.english
        return self.original

    @property
    def english_text(self) -> str:
        """What prompt analysis and CLIP alignment read."""
        return self.english or self.original

    def as_dict(self) -> dict:
        return {"original": self.original, **self.detection.as_dict(), "english": self.english,
                "translator": self.translator, "cached": self.cached, "models_translated_for": self.models,
                "note": self.note or None}


def choose_translator(mode: str, language: str, config: TranslationConfig) -> tuple[TranslatorSpec | None, str]:
    """(the translator to use, why none when None)."""
    if mode not in ("auto", "required"):
        spec = config.get(mode)
        missing = spec.missing()
        return (None, missing) if missing else (spec, "")
    reasons = []
    for translator_id in config.auto:
        spec = config.translators[translator_id]
        if language not in spec.languages:
            reasons.append(f"{translator_id} does not know {language!r}")
            continue
        missing = spec.missing()
        if missing is None:
            return spec, ""
        reasons.append(missing)
    return None, "no translator available: " + "; ".join(reasons or ["none configured"])


def translate_prompt(prompt: str, specs: list, mode: str, config: Callable[[], TranslationConfig], events: Events,
                     resident: bool) -> PromptTranslation:
    """The run's prompt, detected and translated where `specs` (the models the run may use) need it.
    `config()` is read only then: an English prompt (most of them) costs no reading of translation.yaml."""
    result = PromptTranslation(prompt, detect(prompt))
    if result.detection.english:
        return result
    needing = [s.id for s in specs if needs_translation(result.detection, s.prompt_languages)]
    events.emit("prompt_language", language=result.detection.language, needs_translation=",".join(needing))
    if not needing:
        return result
    if mode == "off":
        result.note = "--translate off: every model receives the original prompt"
        return result
    source = next((lang for lang in result.detection.languages if lang != "en"), result.detection.language)
    spec, why = choose_translator(mode, source, config())
    if spec is None:
        return _pass_through(result, why, mode, events)
    try:
        answer = _translate(spec, prompt, source, resident)
    except Exception as exc:  # noqa: BLE001 - a translator that fails leaves the original prompt
        error = as_image_error(exc)
        reason = f"translator {spec.id!r} failed: " + (f"{error.code}: {error.message}" if error else describe_exception(exc))
        return _pass_through(result, reason, mode, events)
    result.english, result.translator, result.cached, result.models = answer["text"], spec.id, answer["cached"], needing
    events.emit("prompt_translated", translator=spec.id, language=source, cached=answer["cached"])
    return result


def _pass_through(result: PromptTranslation, reason: str, mode: str, events: Events) -> PromptTranslation:
    if mode == "required":
        raise ImageGenError("IMG_030", f"--translate required, and the prompt ({result.detection.language}) "
                                       f"could not be translated: {reason}.")
    result.note = f"{reason}; the original prompt passes through"
    events.emit("translation_skipped", reason=reason)
    return result


def _translate(spec: TranslatorSpec, text: str, language: str, resident: bool) -> dict:
    """Through the translator actor: the warm cluster's (named, kept) or this run's own."""
    import ray

    from actors.translator_actor import TranslatorActor
    from cluster.engine.resident import REGISTRY_TIMEOUT, actor_handle, registry_actor

    credentials = env.google_credentials() if spec.backend == "gemini" else None
    if resident:
        name = ray.get(registry_actor().ensure_translator.remote(spec, str(env.cache_dir()), credentials),
                       timeout=REGISTRY_TIMEOUT)
        actor = actor_handle(name)
    else:
        actor = TranslatorActor.remote(spec, str(env.cache_dir()), credentials)
    try:
        return ray.get(actor.translate.remote(text, language), timeout=TRANSLATE_TIMEOUT_S)
    finally:
        if not resident:
            ray.kill(actor)
