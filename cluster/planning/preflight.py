"""Checks that run before any model starts, so a doomed run fails in seconds and writes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

from cluster.errors import ImageGenError

# What a run owns inside its folder; anything else there belongs to somebody else.
MANAGED_ENTRIES = {"images", "metadata", "google-image-url.txt", "image-urls.json", "gallery.html"}
STAGING_MARK = ".multi-image-staging-"
RETIRED_MARK = ".multi-image-retired-"
# Headroom kept free on the output filesystem beyond what the run itself writes.
FREE_SPACE_MARGIN = 50 * 10**6
METADATA_ALLOWANCE = 2 * 10**6


def check_folder_owned(folder: Path) -> None:
    """A rerun replaces the whole folder; refuse one that holds files a run did not make."""
    if not folder.exists():
        return
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in MANAGED_ENTRIES)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise ImageGenError(
            "IMG_016",
            f"--folder-name {folder} already holds files a run did not make ({shown}); a run replaces its "
            "folder as a whole, so pick an empty or new folder.",
        )


def estimate_bytes(pixel_counts: list[int]) -> int:
    """An upper bound on what a run writes: every image twice at most (numbered + primary),
    PNG never larger than raw RGB plus its chunks, and the metadata files."""
    largest = max(pixel_counts, default=0)
    return sum(3 * p + 65536 for p in pixel_counts) + 3 * largest + METADATA_ALLOWANCE


def check_disk_space(folder: Path, estimate: int, limit: int) -> int:
    """IMG_005 when the run would exceed `disk_space_limit` or the free space. Returns free bytes."""
    if estimate > limit:
        raise ImageGenError(
            "IMG_005",
            f"this run may write up to {_mb(estimate)}, above disk_space_limit ({_mb(limit)}); "
            "ask for fewer or smaller images, or raise the limit (--disk-space-limit).",
        )
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < estimate + FREE_SPACE_MARGIN:
        raise ImageGenError(
            "IMG_005",
            f"{probe} has {_mb(free)} free; this run needs up to {_mb(estimate + FREE_SPACE_MARGIN)} "
            "(images, metadata and headroom). Free some space or choose another --folder-name.",
        )
    return free


def clean_stale_staging(folder: Path) -> list[Path]:
    """Remove what an interrupted run left beside `folder`, so a new run starts clean."""
    removed = []
    parent = folder.parent
    if not parent.is_dir():
        return removed
    for mark in (STAGING_MARK, RETIRED_MARK):
        for leftover in parent.glob(f".{folder.name}{mark}*"):
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    return removed


def _mb(n: int) -> str:
    return f"{n / 10**6:.1f} MB"
