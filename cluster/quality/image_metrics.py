"""Weight-free image measures: technical quality and generation artifacts, each in [0, 1].

NumPy only, so they run on the driver or inside the scorer actor alike. The mappings
from raw statistics to [0, 1] are fixed curves, documented next to each constant, so a
score means the same thing on every run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

# Variance of the 4-neighbour Laplacian (on 0..255 grey) at which sharpness reaches 1 - 1/e.
# Sharp photographs sit in the hundreds; visibly soft ones below ~50.
SHARPNESS_SCALE = 150.0
# RMS contrast (std of 0..1 luminance) that counts as fully contrasted; a well-exposed photo
# is usually 0.2-0.3.
CONTRAST_FULL = 0.25
# Pixels at or beyond these 0..255 values count as clipped.
CLIP_LOW, CLIP_HIGH = 2, 253
# A clipped share of 25% or more costs the whole exposure score.
CLIP_TOLERANCE = 0.25
# Luminance std under which an image is flat (blank); a black frame is flat and dark.
FLAT_STD = 0.02
BLACK_MEAN = 0.03
# Horizontal neighbour correlation of luminance: natural and generated images sit above 0.8,
# white noise near 0. Below NOISE_CORR_FULL the image is noise-dominated.
NOISE_CORR_FULL = 0.25
NOISE_CORR_NONE = 0.75

TECHNICAL_WEIGHTS = {"sharpness": 0.35, "exposure": 0.25, "contrast": 0.25, "resolution": 0.15}


@dataclass
class TechnicalReport:
    technical_quality: float
    sharpness: float
    exposure: float
    contrast: float
    resolution: float
    laplacian_variance: float
    mean_luminance: float
    rms_contrast: float
    clipped_fraction: float

    def as_dict(self) -> dict:
        return {k: round(v, 6) for k, v in asdict(self).items()}


@dataclass
class ArtifactReport:
    generation_artifacts: float
    flags: list[str] = field(default_factory=list)
    blank: float = 0.0
    black: float = 0.0
    noise: float = 0.0
    nonfinite: float = 0.0
    neighbour_correlation: float = 1.0

    def as_dict(self) -> dict:
        data = asdict(self)
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in data.items()}


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma in 0..1 from an HxWx3 integer (0..255; uint16 0..65535) or 0..1 float array.

    The dtype decides the scale, never the values: a uint8 frame whose pixels are all 0 or 1 is
    (nearly) black, and guessing from its maximum would read it as a 0..1 image of mid grey."""
    rgb = np.asarray(rgb)
    arr = rgb.astype(np.float64)
    if rgb.dtype == np.uint16:
        arr = arr / 65535.0
    elif np.issubdtype(rgb.dtype, np.integer):
        arr = arr / 255.0
    if arr.ndim == 2:
        return arr
    return arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114


def laplacian_variance(grey255: np.ndarray) -> float:
    if min(grey255.shape) < 3:
        return 0.0
    c = grey255[1:-1, 1:-1]
    lap = grey255[:-2, 1:-1] + grey255[2:, 1:-1] + grey255[1:-1, :-2] + grey255[1:-1, 2:] - 4.0 * c
    return float(lap.var())


def technical_quality(rgb: np.ndarray, requested: tuple[int, int] | None = None) -> TechnicalReport:
    luma = luminance(rgb)
    grey255 = luma * 255.0
    lap_var = laplacian_variance(grey255)
    sharpness = 1.0 - float(np.exp(-lap_var / SHARPNESS_SCALE))

    mean = float(luma.mean())
    clipped = float(((grey255 <= CLIP_LOW) | (grey255 >= CLIP_HIGH)).mean())
    mean_term = 1.0 - ((mean - 0.5) / 0.5) ** 2
    exposure = max(0.0, mean_term) * max(0.0, 1.0 - clipped / CLIP_TOLERANCE)

    rms = float(luma.std())
    contrast = min(1.0, rms / CONTRAST_FULL)

    height, width = luma.shape
    if requested:
        resolution = min(1.0, (width * height) / float(requested[0] * requested[1]))
    else:
        resolution = 1.0

    parts = {"sharpness": sharpness, "exposure": exposure, "contrast": contrast, "resolution": resolution}
    overall = sum(TECHNICAL_WEIGHTS[k] * v for k, v in parts.items())
    return TechnicalReport(
        technical_quality=_unit(overall), sharpness=_unit(sharpness), exposure=_unit(exposure),
        contrast=_unit(contrast), resolution=_unit(resolution), laplacian_variance=lap_var,
        mean_luminance=mean, rms_contrast=rms, clipped_fraction=clipped,
    )


def neighbour_correlation(luma: np.ndarray) -> float:
    left, right = luma[:, :-1].ravel(), luma[:, 1:].ravel()
    if left.size < 2 or left.std() < 1e-9 or right.std() < 1e-9:
        return 1.0  # a flat image is perfectly predictable, not noisy
    return float(np.corrcoef(left, right)[0, 1])


def generation_artifacts(rgb: np.ndarray, nonfinite_fraction: float = 0.0) -> ArtifactReport:
    """How strongly the image shows a failed generation: 0 = none seen, 1 = certainly broken."""
    luma = luminance(rgb)
    std, mean = float(luma.std()), float(luma.mean())
    blank = _unit(1.0 - std / FLAT_STD) if std < FLAT_STD else 0.0
    black = 1.0 if (mean < BLACK_MEAN and std < FLAT_STD) else 0.0
    corr = neighbour_correlation(luma)
    noise = _unit((NOISE_CORR_NONE - corr) / (NOISE_CORR_NONE - NOISE_CORR_FULL))
    nonfinite = _unit(0.5 + 0.5 * nonfinite_fraction) if nonfinite_fraction > 0 else 0.0
    components = {"blank": blank, "black": black, "noise": noise, "nonfinite": nonfinite}
    flags = [name for name, value in components.items() if value >= 0.5]
    return ArtifactReport(
        generation_artifacts=max(components.values()), flags=flags, blank=blank, black=black,
        noise=noise, nonfinite=nonfinite, neighbour_correlation=corr,
    )


def _unit(value: float) -> float:
    return float(min(1.0, max(0.0, value)))
