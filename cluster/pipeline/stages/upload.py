"""Upload: with an upload URI (--upload-uri, else configs/output.yaml), every image and the primary
copy to Google Cloud Storage; their URLs replace the file:// ones where the upload worked, and a
failed upload is IMG_022 in the report. It runs before the write, since the report records the URLs."""

from __future__ import annotations

from cluster.errors import ImageGenError
from cluster.observability.events import Events
from cluster.output.report import RunOutcome
from cluster.output.uploader import GcsUploader, UploadConfig
from cluster.output.writer import PRIMARY_NAME
from cluster.pipeline.state import RunState


def upload(state: RunState) -> RunState:
    config = _upload_config(state)
    if config.uri and state.outcome.images:
        _upload(state.outcome, config, state.context.events)
    return state


def _upload_config(state: RunState) -> UploadConfig:
    config, request = state.context.upload_defaults(), state.request
    changes = {}
    if request.upload_uri:
        changes["uri"] = request.upload_uri
    if request.signed_urls is not None:
        changes["signed_urls"] = request.signed_urls
    return config.model_copy(update=changes) if changes else config


def _upload(outcome: RunOutcome, config: UploadConfig, events: Events) -> None:
    uploader = GcsUploader(config)
    run_path = outcome.folder_display if not outcome.folder_display.startswith("/") else outcome.request.folder_name.name
    names = {f.position: uploader.object_name(run_path, f"images/{f.filename}") for f in outcome.images}
    files = {names[f.position]: f.image.png for f in outcome.images}
    primary = outcome.primary_image
    primary_name = uploader.object_name(run_path, f"images/{PRIMARY_NAME}") if primary else None
    if primary is not None:
        files[primary_name] = primary.image.png
    report = uploader.upload_all(files)
    for final in outcome.images:
        if names[final.position] in report.urls:
            final.url = report.urls[names[final.position]]
    if primary_name in report.urls:
        outcome.primary_url = report.urls[primary_name]
    outcome.upload = {
        "uri": config.uri, "signed_urls": config.signed_urls, "uploaded": len(report.urls),
        "failed": [{"object": name, "reason": reason, "attempts": report.attempts.get(name)}
                   for name, reason in report.failures.items()],
    }
    events.emit("uploaded", files=len(report.urls), failed=len(report.failures))
    if report.failures and outcome.error is None:
        first = next(iter(report.failures.items()))
        outcome.error = ImageGenError(
            "IMG_022", f"{len(report.failures)} of {len(files)} uploads to {config.uri} failed after "
                       f"{config.attempts} tries (first: {first[0]}: {first[1]}); the images are kept locally "
                       "with file:// URLs.")
