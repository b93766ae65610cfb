"""Uploads for the downstream steps: the legacy `google-image-url` is what the video step reads.

With an upload URI (gs://bucket/prefix), every image goes to Google Cloud Storage through
google-cloud-storage and the run's URLs become https://storage.googleapis.com/... (or V4
signed URLs). A failed upload is retried, then reported (IMG_022) — never dropped silently.
STORAGE_EMULATOR_HOST (read in cluster.env) points the client at an emulator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from cluster import env
from cluster.config_files import bundled_config, load_config
from cluster.errors import ImageGenError
from cluster.planning.request import parse_gcs_uri

DEFAULT_OUTPUT_FILE = bundled_config("output.yaml")
PUBLIC_HOST = "https://storage.googleapis.com"


class UploadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str | None = Field(None, description="gs://bucket/prefix; None keeps file:// URLs.")
    signed_urls: bool = False
    signed_url_expiry_hours: float = Field(168, gt=0, le=168)  # V4 signatures last 7 days at most
    attempts: int = Field(3, ge=1, le=10)
    backoff_seconds: float = Field(1.0, ge=0)


def load_upload_config(path: str | Path | None = None) -> UploadConfig:
    return load_config(path, DEFAULT_OUTPUT_FILE, "output config", lambda raw: UploadConfig(**(raw.get("upload") or {})))


def public_url(bucket: str, name: str) -> str:
    return f"{PUBLIC_HOST}/{bucket}/{quote(name)}"


@dataclass
class UploadReport:
    urls: dict[str, str] = field(default_factory=dict)  # object name -> URL
    failures: dict[str, str] = field(default_factory=dict)  # object name -> reason
    attempts: dict[str, int] = field(default_factory=dict)


class GcsUploader:
    def __init__(self, config: UploadConfig, sleep=time.sleep):
        from google.cloud import storage

        if not config.uri:
            raise ValueError("no upload uri")
        self.config = config
        self.bucket_name, self.prefix = parse_gcs_uri(config.uri)
        self._sleep = sleep
        emulator = env.storage_emulator_host()
        creds = env.google_credentials()
        try:
            if emulator:
                from google.auth.credentials import AnonymousCredentials

                self.client = storage.Client(project=creds.project or "emulator", credentials=AnonymousCredentials())
            else:
                self.client = storage.Client(project=creds.project)
        except Exception as exc:  # noqa: BLE001 - no ADC, bad project: a clear IMG_007
            raise ImageGenError("IMG_007", f"Google Cloud Storage client: {type(exc).__name__}: "
                                           f"{' '.join(str(exc).split())[:200]}") from None
        self.bucket = self.client.bucket(self.bucket_name)
        self._signer = self._signing_credentials() if config.signed_urls else None

    def _signing_credentials(self) -> Any:
        """Credentials that can sign: a service-account key file (GOOGLE_APPLICATION_CREDENTIALS)."""
        key_file = env.google_credentials().adc_file
        if key_file is None:
            raise ImageGenError("IMG_007", "signed URLs need a service-account key: set GOOGLE_APPLICATION_CREDENTIALS.")
        from google.oauth2 import service_account

        try:
            return service_account.Credentials.from_service_account_file(str(key_file))
        except (ValueError, OSError) as exc:
            raise ImageGenError("IMG_007", f"{key_file} is not a service-account key usable for signing ({exc}).") from None

    def object_name(self, run_path: str, filename: str) -> str:
        parts = [p for p in (self.prefix, run_path.strip("/"), filename) if p]
        return "/".join(parts)

    def upload_all(self, files: dict[str, bytes]) -> UploadReport:
        """Upload {object name: bytes}; every file tried `attempts` times before it counts as failed."""
        report = UploadReport()
        for name, data in files.items():
            delay = self.config.backoff_seconds
            for attempt in range(1, self.config.attempts + 1):
                report.attempts[name] = attempt
                try:
                    blob = self.bucket.blob(name)
                    blob.upload_from_string(data, content_type="image/png")
                    report.urls[name] = self._url(blob)
                    report.failures.pop(name, None)
                    break
                except Exception as exc:  # noqa: BLE001 - network, auth, quota: retried, then reported
                    report.failures[name] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                    if attempt < self.config.attempts:
                        self._sleep(delay)
                        delay *= 2
        return report

    def _url(self, blob) -> str:
        if self._signer is None:
            return public_url(self.bucket_name, blob.name)
        return blob.generate_signed_url(
            version="v4", expiration=timedelta(hours=self.config.signed_url_expiry_hours), method="GET",
            credentials=self._signer,
        )
