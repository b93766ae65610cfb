"""Uploads to Google Cloud Storage with the real google-cloud-storage client against
gcp-storage-emulator on 127.0.0.1."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import pytest

from cluster.errors import ImageGenError
from cluster.pipeline.run import run_generation
from cluster.output.uploader import GcsUploader, UploadConfig, public_url
from cluster.planning.request import parse_gcs_uri
from tests.helpers import make_request, quick_limits, read_json, scripted_registry

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture
def storage(gcs_emulator, monkeypatch):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{gcs_emulator}")
    return gcs.Client(project="test", credentials=AnonymousCredentials()).bucket("kamui-test")


@pytest.fixture
def local_registry(tmp_path):
    return scripted_registry(tmp_path, {"local": {"script": {"latency": 0.05}, "max_batch_size": 4}})


def test_every_image_is_uploaded_and_the_urls_point_at_it(storage, tmp_path, local_registry):
    request = make_request(local_registry, tmp_path, models="local", image_count=3,
                           upload_uri="gs://kamui-test/runs/")
    result = run_generation(request, local_registry, quick_limits())
    assert result.exit_code == 0
    folder = tmp_path / "out"
    urls = json.loads((folder / "image-urls.json").read_text())
    assert urls == ["https://storage.googleapis.com/kamui-test/runs/out/images/generated-image-1.png",
                    "https://storage.googleapis.com/kamui-test/runs/out/images/generated-image-2.png",
                    "https://storage.googleapis.com/kamui-test/runs/out/images/generated-image-3.png"]
    for i, url in enumerate(urls, start=1):
        blob = storage.blob(f"runs/out/images/generated-image-{i}.png")
        assert blob.download_as_bytes() == (folder / f"images/generated-image-{i}.png").read_bytes()
    primary_url = (folder / "google-image-url.txt").read_text().strip()
    assert primary_url == "https://storage.googleapis.com/kamui-test/runs/out/images/generated-image.png"
    assert storage.blob("runs/out/images/generated-image.png").download_as_bytes() == \
        (folder / "images/generated-image.png").read_bytes()
    report = read_json(folder / "metadata/generation-report.json")
    assert [i["google_url"] for i in report["images"]] == urls
    assert result.outputs["google-image-url"] == primary_url
    assert json.loads(result.outputs["image-urls"]) == urls
    assert report["upload"]["uploaded"] == 4 and report["upload"]["failed"] == []


def test_public_urls_quote_the_object_name():
    assert public_url("kamui-test", "runs/my run/images/a#1.png") == \
        "https://storage.googleapis.com/kamui-test/runs/my%20run/images/a%231.png"


def test_failed_uploads_are_retried_then_reported_never_dropped(storage, tmp_path, local_registry):
    request = make_request(local_registry, tmp_path, models="local", upload_uri="gs://no-such-bucket/x")
    config = UploadConfig(attempts=2, backoff_seconds=0.01)
    result = run_generation(request, local_registry, quick_limits(), upload_config=config)
    assert result.exit_code == 1
    assert result.outcome.error.code == "IMG_022"
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert len(report["upload"]["failed"]) == 2 and report["upload"]["failed"][0]["attempts"] == 2
    # the image itself is kept, with its local URL
    assert (tmp_path / "out/images/generated-image-1.png").is_file()
    assert report["images"][0]["google_url"].startswith("file://")


def test_signed_urls_with_a_service_account_key(storage, tmp_path, monkeypatch):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps({
        "type": "service_account", "project_id": "test", "private_key_id": "k1", "private_key": pem,
        "client_email": "uploader@test.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    uploader = GcsUploader(UploadConfig(uri="gs://kamui-test/signed", signed_urls=True, signed_url_expiry_hours=2))
    report = uploader.upload_all({"signed/a.png": b"\x89PNG fake"})
    url = report.urls["signed/a.png"]
    query = parse_qs(urlparse(url).query)
    assert urlparse(url).path.endswith("/kamui-test/signed/a.png")
    assert query["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"] and query["X-Goog-Expires"] == ["7200"]
    assert "uploader@test.iam.gserviceaccount.com" in query["X-Goog-Credential"][0]
    assert storage.blob("signed/a.png").download_as_bytes() == b"\x89PNG fake"


@pytest.mark.parametrize("uri", ["s3://bucket/x", "gs://", "gs://UPPER/x", "gs://bucket/../x", "gs://bucket//x"])
def test_bad_upload_uris_are_img_026(uri):
    with pytest.raises(ImageGenError) as info:
        parse_gcs_uri(uri)
    assert info.value.code == "IMG_026"


def test_upload_uri_parsing():
    assert parse_gcs_uri("gs://kamui-test") == ("kamui-test", "")
    assert parse_gcs_uri("gs://kamui-test/a/b/") == ("kamui-test", "a/b")
