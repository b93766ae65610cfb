"""The compatibility writer: the design card's folder layout, written atomically.

Everything is written into a staging folder beside the target, fsynced, then swapped in
with renames: the folder never holds a half-written image or report, and a rerun into
the same folder replaces the previous result as a whole.

{folder}/
  images/generated-image.png        primary (byte-identical to its numbered copy)
  images/generated-image-{1..N}.png
  metadata/generation-report.json
  metadata/quality-analysis.json
  metadata/model-comparison.md
  google-image-url.txt              primary URL
  image-urls.json                   all URLs, in image order
  gallery.html                      (when a gallery renderer is given)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster import env
from cluster.planning.preflight import RETIRED_MARK, STAGING_MARK
from cluster.output.report import RunOutcome, comparison_markdown, generation_report, quality_analysis

PRIMARY_NAME = "generated-image.png"
REPORT_REL = Path("metadata") / "generation-report.json"


@dataclass
class WrittenRun:
    folder: Path
    report: dict
    report_path: Path
    urls: list[str]
    primary_url: str


def display_path(path: Path, cwd: Path | None = None) -> str:
    """`path` relative to the working directory when inside it (what a workflow step passes on)."""
    cwd = cwd or env.working_dir()
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return str(path)


def write_run(outcome: RunOutcome, gallery: Callable[[RunOutcome, dict], str] | None = None,
              durable: bool = True) -> WrittenRun:
    """The folder, written in a staging folder and swapped in. `durable`: every file and rename on the
    disk before this returns; off only for a scratch folder its caller removes once it has read it
    (an API answer carried in its body), where a power cut loses nothing anyone will read."""
    folder = outcome.request.folder_name
    put = write_durably if durable else _write_plain
    sync = fsync_dir if durable else _no_sync
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}{STAGING_MARK}", dir=folder.parent))
    try:
        # mkdtemp makes 0700 and the rename keeps it: the results folder gets the mode any folder
        # made here gets, so a web server or another user can read what a workflow published
        os.chmod(staging, 0o777 & ~current_umask())
        images_dir = staging / "images"
        meta_dir = staging / "metadata"
        images_dir.mkdir()
        meta_dir.mkdir()

        sizes: dict[int, int] = {}
        for final in outcome.images:
            put(images_dir / final.filename, final.image.png)
            sizes[final.position] = len(final.image.png)
        primary = outcome.primary_image
        if primary is not None:
            put(images_dir / PRIMARY_NAME, primary.image.png)

        urls = [f.url for f in outcome.images]
        primary_url = primary_url_of(outcome)
        report_display = display_path(folder / REPORT_REL)
        report = generation_report(outcome, sizes, report_display)
        comparison = report["model_comparison"]
        _write_text(put, meta_dir / "generation-report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        _write_text(put, meta_dir / "quality-analysis.json",
                    json.dumps(quality_analysis(outcome), indent=2, ensure_ascii=False) + "\n")
        _write_text(put, meta_dir / "model-comparison.md", comparison_markdown(outcome, comparison))
        _write_text(put, staging / "google-image-url.txt", primary_url + ("\n" if primary_url else ""))
        _write_text(put, staging / "image-urls.json", json.dumps(urls, indent=2) + "\n")
        if gallery is not None:
            _write_text(put, staging / "gallery.html", gallery(outcome, report))
        sync(images_dir)
        sync(meta_dir)
        sync(staging)
        _swap_in(staging, folder, sync)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return WrittenRun(folder, report, folder / REPORT_REL, urls, primary_url)


def current_umask() -> int:
    """The process's umask, read without changing it (Linux); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def primary_url_of(outcome: RunOutcome) -> str:
    primary = outcome.primary_image
    if primary is None:
        return ""
    if outcome.primary_url:
        return outcome.primary_url
    if primary.url.startswith("file://"):
        # the legacy file is images/generated-image.png; point at it, not at its numbered twin
        return (outcome.request.folder_name / "images" / PRIMARY_NAME).as_uri()
    return primary.url


def file_url(folder: Path, position: int) -> str:
    return (folder / "images" / f"generated-image-{position + 1}.png").as_uri()


def _swap_in(staging: Path, folder: Path, sync: Callable[[Path], None]) -> None:
    retired = None
    if folder.exists():
        retired = folder.parent / f".{folder.name}{RETIRED_MARK}{os.getpid()}"
        shutil.rmtree(retired, ignore_errors=True)
        os.rename(folder, retired)
    try:
        os.rename(staging, folder)
    except BaseException:
        if retired is not None and not folder.exists():
            os.rename(retired, folder)  # put the previous result back
        raise
    sync(folder.parent)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def write_durably(path: Path, data: bytes) -> None:
    """`data` in `path`, on the disk (fsynced) before this returns; no partial file when it fails
    (a full disk left empty `parts/*.tmp` files behind a run that said its temporary files were gone)."""
    try:
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        Path(path).unlink(missing_ok=True)
        raise


def _write_plain(path: Path, data: bytes) -> None:
    """`data` in `path`, left to the page cache (a scratch folder's file); no partial file when it fails."""
    try:
        Path(path).write_bytes(data)
    except OSError:
        Path(path).unlink(missing_ok=True)
        raise


def _no_sync(path: Path) -> None:
    pass


def _write_text(put: Callable[[Path, bytes], None], path: Path, text: str) -> None:
    put(path, text.encode("utf-8"))


def fsync_dir(path: Path) -> None:
    """Make a folder's new entries durable (a rename is only durable once its folder is synced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
