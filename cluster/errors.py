"""The one error type meant for users, and the code table.

IMG_001..IMG_010 keep the meanings of the design card's appendix C; everything
from IMG_011 up is ours. The CLI turns an `ImageGenError` into a single line
``error IMG_0xx: message`` in exactly one place (`cluster.entrypoints.cli`).
"""

from __future__ import annotations

import re

# code -> (short title, exit status when it ends the run)
# Exit 2 is "the input was wrong, nothing was written"; exit 1 is "we tried and failed".
ERROR_CODES: dict[str, tuple[str, int]] = {
    "IMG_001": ("Invalid image count parameter", 2),
    "IMG_002": ("Model not available", 2),
    "IMG_003": ("Generation timeout exceeded", 1),
    "IMG_004": ("Quality threshold not met", 1),
    "IMG_005": ("Insufficient storage space", 1),
    "IMG_006": ("API rate limit exceeded", 1),
    "IMG_007": ("Authentication failure", 1),
    "IMG_008": ("Network connectivity issue", 1),
    "IMG_009": ("Prompt validation failed", 2),
    "IMG_010": ("Resource allocation failure", 1),
    # ours
    "IMG_011": ("Invalid command line", 2),
    "IMG_012": ("Invalid quality threshold", 2),
    "IMG_013": ("Invalid generation strategy", 2),
    "IMG_014": ("Invalid max-parallel", 2),
    "IMG_015": ("Invalid enable-comparison flag", 2),
    "IMG_016": ("Invalid folder name", 2),
    "IMG_017": ("Invalid seed, size or steps override", 2),
    "IMG_018": ("Invalid configuration file", 2),
    "IMG_019": ("Ray cluster unavailable", 1),
    "IMG_020": ("Model execution failed", 1),
    "IMG_021": ("Run interrupted", 1),
    "IMG_022": ("Upload failed", 1),
    "IMG_023": ("Content filtered by the model's safety system", 1),
    "IMG_024": ("Invalid batch manifest", 2),
    "IMG_025": ("Invalid limit override", 2),
    "IMG_026": ("Invalid upload URI", 2),
    "IMG_027": ("Unknown scorer", 2),
    "IMG_028": ("Invalid memory plan", 2),
    "IMG_029": ("Over budget", 2),
    "IMG_030": ("Translation unavailable", 2),
}


class ImageGenError(Exception):
    """An error meant for the user, carrying an ``IMG_0xx`` code.

    The constructor takes plain arguments only so the exception survives
    pickling across Ray workers (Ray re-raises it on the driver as its own type).
    """

    def __init__(self, code: str, message: str, retryable: bool = False):
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(code, message, retryable)
        self.code = code
        self.message = message
        self.retryable = retryable

    @property
    def exit_status(self) -> int:
        return ERROR_CODES[self.code][1]

    @property
    def title(self) -> str:
        return ERROR_CODES[self.code][0]

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __reduce__(self):
        return (type(self), (self.code, self.message, self.retryable))


# Ray colours its error texts for terminals; in a report or a CI log the codes are noise
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def describe_exception(exc: BaseException, limit: int = 300) -> str:
    """One line for a report: the original exception inside Ray's wrappers, not their traceback dump."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = " ".join(strip_ansi(str(exc)).split())
    return f"{type(exc).__name__}: {text}"[:limit]


def as_image_error(exc: BaseException) -> ImageGenError | None:
    """The ImageGenError inside `exc`, unwrapping Ray's RayTaskError/ActorError."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ImageGenError):
            return exc
        cause = getattr(exc, "cause", None)  # RayTaskError keeps the user exception here
        exc = cause if isinstance(cause, BaseException) else exc.__cause__
    return None
