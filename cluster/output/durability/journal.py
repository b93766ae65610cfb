"""The run journal: finished images on disk the moment they arrive.

Beside the target folder, `.{name}.multi-image-journal/` holds `journal.jsonl` — a header line
(the request's key, the planned tasks with their seeds) and one line per finished image — and
each image's PNG under `parts/`, written and fsynced before its line is. The target folder itself
is still only ever swapped in whole by the writer; the journal is what survives a SIGKILL, an
out-of-memory kill or a dead node. Running the same request into the same folder again resumes:
journaled images that still verify (present, same SHA-256, decodable) are kept, the rest are made
again with the seeds first planned. A different request discards the journal and starts clean.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cluster.work import Attempt, GeneratedImage, ImageTask
from cluster.output.writer import fsync_dir, write_durably

JOURNAL_MARK = ".multi-image-journal"
JOURNAL_VERSION = 1


def journal_dir(folder: Path) -> Path:
    return folder.parent / f".{folder.name}{JOURNAL_MARK}"


def request_key(fields: dict) -> str:
    """What makes two requests the same run: the fields that decide its images."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass
class Resumed:
    """What an earlier, unfinished run of the same request left that can be kept."""

    header: dict
    images: list[GeneratedImage] = field(default_factory=list)
    discarded: list[dict] = field(default_factory=list)  # {"index", "reason"}

    @property
    def tasks(self) -> list[ImageTask]:
        return [ImageTask(**t) for t in self.header["tasks"]]

    def summary(self) -> dict:
        return {"journal_created": self.header.get("created"), "images_kept": sorted(i.task.index for i in self.images),
                "images_discarded": self.discarded}


class RunJournal:
    def __init__(self, folder: Path):
        self.folder = folder
        self.dir = journal_dir(folder)
        self.images: list[GeneratedImage] = []  # what this process journaled or kept, in arrival order
        self._file = None

    # --- reading an earlier run's journal ------------------------------------------------

    def load(self, key: str) -> Resumed | None:
        """The earlier run's kept images when its journal is for `key`; None (and the journal
        gone) when there is none, it is another request's, or it cannot be read."""
        path = self.dir / "journal.jsonl"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            header = json.loads(lines[0])
        except (OSError, ValueError, IndexError):
            self.discard()
            return None
        if header.get("key") != key or header.get("version") != JOURNAL_VERSION:
            self.discard()
            return None
        resumed = Resumed(header)
        seen: set[int] = set()
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except ValueError:  # the line being written when the process died
                continue
            index = entry.get("task", {}).get("index")
            if index in seen:
                continue
            data, reason = self._verify(entry)
            if reason:
                resumed.discarded.append({"index": index, "reason": reason})
                continue
            seen.add(index)
            resumed.images.append(_image(entry, data))
        return resumed

    def _verify(self, entry: dict) -> tuple[bytes, str]:
        """The entry's PNG and "" when it is whole; else why it will be made again."""
        try:
            data = (self.dir / entry["file"]).read_bytes()
        except (OSError, KeyError):
            return b"", "its file is missing"
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            return b"", "its file does not match the hash journaled with it"
        try:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as image:
                image.load()
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt: made again
            return b"", f"it does not decode ({type(exc).__name__})"
        return data, ""

    # --- writing this run's journal ---------------------------------------------------

    def start(self, key: str, tasks: list[ImageTask], header: dict, resumed: Resumed | None) -> None:
        """Open the journal for appending; a fresh one gets its header, a resumed one keeps its lines."""
        (self.dir / "parts").mkdir(parents=True, exist_ok=True)
        path = self.dir / "journal.jsonl"
        if resumed is None:
            line = {"version": JOURNAL_VERSION, "key": key, "tasks": [asdict(t) for t in tasks], **header}
            write_durably(path, (json.dumps(line) + "\n").encode("utf-8"))
            fsync_dir(self.dir)
        else:
            self.images.extend(resumed.images)
        self._file = open(path, "a", encoding="utf-8")

    def record(self, image: GeneratedImage) -> None:
        """The image's PNG, then its line: a line always names a complete, fsynced file."""
        if self._file is None:
            return
        sha256 = hashlib.sha256(image.png).hexdigest()
        name = f"parts/{image.task.index:03d}-{sha256[:12]}.png"
        target = self.dir / name
        scratch = target.with_suffix(".tmp")
        write_durably(scratch, image.png)
        os.replace(scratch, target)
        fsync_dir(target.parent)  # the rename too must survive a power cut before the line names it
        entry = {"file": name, "sha256": sha256, **_entry(image)}
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.images.append(image)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _entry(image: GeneratedImage) -> dict:
    return {"task": asdict(image.task), "seconds": image.seconds, "replica": image.replica, "width": image.width,
            "height": image.height, "weights": image.weights, "nonfinite_fraction": image.nonfinite_fraction,
            "extra": image.extra, "attempts": [asdict(a) for a in image.attempts], "remote_url": image.remote_url,
            "prompt_truncation": image.prompt_truncation}


def _image(entry: dict, png: bytes) -> GeneratedImage:
    return GeneratedImage(
        task=ImageTask(**entry["task"]), png=png, seconds=entry["seconds"], replica=entry["replica"],
        width=entry["width"], height=entry["height"], weights=entry["weights"],
        nonfinite_fraction=entry["nonfinite_fraction"], extra=entry.get("extra") or {},
        attempts=[Attempt(**a) for a in entry.get("attempts", [])], remote_url=entry.get("remote_url"),
        prompt_truncation=entry.get("prompt_truncation"))
