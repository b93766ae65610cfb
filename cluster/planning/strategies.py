"""Where the scheduler's tasks come from: all at once (parallel, smart) or one at a time,
each informed by the scores of the earlier ones (sequential).

The sequential rule ("explore, then exploit"), per model:
1. the first image uses the prompt as given (`original`);
2. each next image tries the next prompt variation below, with a fresh seed, until
   every variation has been tried once or the model's images run out;
3. every later image uses the variation whose image scored best so far (ties: the
   earlier one), with a fresh seed.
Each image records its variation as `prompt_variation`. Images that failed give no
evidence and do not count as tried.
"""

from __future__ import annotations

from cluster.work import GeneratedImage, ImageTask

# (name, suffix) — appended to the user's prompt; "original" leaves it untouched.
PROMPT_VARIATIONS: tuple[tuple[str, str], ...] = (
    ("original", ""),
    ("detailed", ", highly detailed, sharp focus, intricate textures"),
    ("lighting", ", dramatic professional lighting, balanced composition"),
    ("vivid", ", vivid colors, high contrast, rich tones"),
)


def apply_variation(prompt: str, name: str) -> str:
    suffix = dict(PROMPT_VARIATIONS)[name]
    return prompt + suffix


class StaticSource:
    """Every task known up front (parallel and smart strategies)."""

    def __init__(self, tasks: list[ImageTask]):
        self._tasks = list(tasks)

    def take(self) -> list[ImageTask]:
        tasks, self._tasks = self._tasks, []
        return tasks

    def on_result(self, image: GeneratedImage, score: float | None) -> None:
        pass

    def on_failure(self, task: ImageTask) -> None:
        pass

    def exhausted(self) -> bool:
        return not self._tasks

    @property
    def wants_scores(self) -> bool:
        return False


class SequentialSource:
    """One image at a time; each next prompt chosen from the earlier images' scores."""

    def __init__(self, tasks: list[ImageTask]):
        self._queue = list(tasks)  # planned order; prompts are decided when a task is released
        self._waiting = False
        self._scores: dict[str, dict[str, list[float]]] = {}  # model -> variation -> scores

    @property
    def wants_scores(self) -> bool:
        return True

    def take(self) -> list[ImageTask]:
        if self._waiting or not self._queue:
            return []
        planned = self._queue.pop(0)
        variation = self.next_variation(planned.model)
        self._waiting = True
        return [_with_variation(planned, variation)]

    def next_variation(self, model: str) -> str:
        tried = self._scores.get(model, {})
        for name, _ in PROMPT_VARIATIONS:
            if name not in tried:
                return name
        # exploit: the best mean score; PROMPT_VARIATIONS order breaks ties
        return max(PROMPT_VARIATIONS, key=lambda v: (sum(tried[v[0]]) / len(tried[v[0]])))[0]

    def on_result(self, image: GeneratedImage, score: float | None) -> None:
        if score is not None:
            task = image.task
            self._scores.setdefault(task.model, {}).setdefault(task.prompt_variation, []).append(score)
        self._waiting = False

    def on_failure(self, task: ImageTask) -> None:
        self._waiting = False

    def exhausted(self) -> bool:
        return not self._queue and not self._waiting


def _with_variation(task: ImageTask, variation: str) -> ImageTask:
    from dataclasses import replace

    base = task.prompt
    return replace(task, prompt=apply_variation(base, variation), prompt_variation=variation)

