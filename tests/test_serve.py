"""`multi-image serve`: the OpenAI Images API on Ray Serve, called with the real `openai` client on
127.0.0.1, over the session's cluster (tiny-flux resident); and the command itself, started and
stopped with a signal."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from cluster.entrypoints.api.keys import digest

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-kamui-test-0123456789abcdef"
OTHER_KEY = "sk-kamui-other-0123456789abcdef"
QUEUE = 6


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_models(folder: Path) -> Path:
    """The bundled models, and two scripted models (tests/scripted_backend.py): `slow`, whose calls
    hang until cancelled, to hold requests in flight, and `failing`, whose calls all fail."""
    import yaml

    from models.registry import DEFAULT_MODELS_FILE

    doc = yaml.safe_load(DEFAULT_MODELS_FILE.read_text(encoding="utf-8"))
    doc["models"]["slow"] = {"backend": "custom", "factory": "tests.scripted_backend:ScriptedGenerator",
                             "remote": True, "weights": "random", "width": 32, "height": 32, "steps": 1,
                             "auto_select": False, "call_args": {"hang": 120, "log": str(folder / "slow.jsonl")}}
    doc["models"]["tiny-flux"]["aliases"] = ["client-fixed-model"]
    doc["models"]["failing"] = {**doc["models"]["slow"], "call_args": {
        "fail_calls": list(range(1, 100)), "fail_code": "IMG_020", "counter": str(folder / "failing.counter")}}
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def server(ray_session, tiny_models, tmp_path_factory):
    from ray import serve

    import dataclasses

    from cluster.entrypoints.api.app import ServerConfig
    from cluster.entrypoints.api.server import deploy, undeploy
    from cluster.planning.limits import load_limits
    from cluster.entrypoints.warm import bring_down, bring_up
    from models.registry import load_registry
    from models.scorers import load_scoring

    data = tmp_path_factory.mktemp("serve-data")
    models = server_models(tmp_path_factory.mktemp("serve-models"))
    bring_up(load_registry(models), ["tiny-flux"], load_scoring(), "none", load_limits())
    config = ServerConfig(data_dir=str(data), key_digests=(digest(KEY), digest(OTHER_KEY)), max_queue=QUEUE, url_ttl_s=600,
                          body_timeout_s=2.0,
                          scorer="none", history_db=str(data / "history.sqlite"), config=str(models),
                          budget_usd_per_key_day=100.0)  # every request goes through its key's hold
    port = free_port()
    # clients reach it by another name than the one it binds (as through a proxy): url answers use that
    config = dataclasses.replace(config, public_url=f"http://localhost:{port}")
    deployment = deploy(config, "127.0.0.1", port)
    yield {"url": deployment.url, "data": data, "config": config, "port": port, "deployment": deployment,
           "slow_log": models.parent / "slow.jsonl"}
    undeploy(deployment)
    serve.shutdown()
    bring_down()


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server['url']}/v1", api_key=KEY, max_retries=0, timeout=120)


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


def test_b64_images_at_the_requested_size_with_their_metadata(client):
    from cluster.output.png import read_parameters

    result = client.images.generate(model="tiny-flux", prompt="a lighthouse at dusk", n=2, size="64x64",
                                    response_format="b64_json", user="test-user")
    assert len(result.data) == 2
    pngs = [base64.b64decode(item.b64_json) for item in result.data]
    assert [png_size(p) for p in pngs] == [(64, 64), (64, 64)]
    params = [read_parameters(p) for p in pngs]
    assert {p["model"] for p in params} == {"tiny-flux"} and params[0]["seed"] != params[1]["seed"]


def test_adapters_arrive_through_extra_body_and_are_listed_with_the_models_they_fit(client, server):
    import openai

    from cluster.output.png import read_parameters

    with urllib.request.urlopen(urllib.request.Request(f"{server['url']}/v1/models",
                                                       headers={"Authorization": f"Bearer {KEY}"}),
                                timeout=30) as response:
        listing = json.loads(response.read())
    adapters = {a["id"]: a for a in listing["adapters"]}
    assert adapters["tiny-style"]["models"] == ["tiny-flux"] and adapters["tiny-style"]["available"]
    assert next(m for m in listing["data"] if m["id"] == "tiny-flux")["adapters"] == ["tiny-style", "tiny-grain"]
    for adapters_field, expected in (("tiny-style:0.8", [("tiny-style", 0.8)]),
                                     ([{"id": "tiny-grain", "scale": 0.5}], [("tiny-grain", 0.5)])):
        result = client.images.generate(model="tiny-flux", prompt="a lighthouse", size="64x64",
                                        extra_body={"adapters": adapters_field})
        params = read_parameters(base64.b64decode(result.data[0].b64_json))
        assert [(a["id"], a["scale"]) for a in params["adapters"]] == expected
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(model="tiny-flux", prompt="x", size="64x64", extra_body={"adapters": "no-such"})
    assert refused.value.body["code"] == "IMG_031"


def test_url_images_are_served_by_the_server(client, server):
    raw = client.images.with_raw_response.generate(model="tiny-flux", prompt="a fox in the snow", n=1, size="128x64",
                                                   response_format="url")
    # where the request's time went, by stage and the model's own calls (scripts/bench_latency.py reads it)
    timing = dict(part.strip().split(";dur=") for part in raw.headers["server-timing"].split(","))
    assert {"preflight", "select", "generate", "score", "write", "publish", "cluster", "pipeline"} <= set(timing)
    assert 0 < float(timing["pipeline"]) <= float(timing["generate"])
    url = raw.parse().data[0].url
    assert url.startswith(f"http://localhost:{server['port']}/v1/files/")  # --public-url
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.headers["content-type"] == "image/png" and png_size(response.read()) == (128, 64)
    request_json = json.loads((server["data"] / "images" / url.split("/")[-2] / "request.json").read_text())
    assert request_json["size"] == "128x64"


def test_with_an_upload_uri_url_images_point_at_gcs_with_the_servers_own_environment(client, server, gcs_emulator,
                                                                                     monkeypatch):
    """The server's replica runs in its raylet's environment (here the test session's, started before
    the emulator existed): what `serve` was started with must reach it, or the upload goes nowhere."""
    import dataclasses

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    from cluster import env
    from cluster.entrypoints.api.server import deploy

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{gcs_emulator}")
    uploading = dataclasses.replace(server["config"], upload_uri="gs://kamui-test/serve", environment=env.forwarded())
    assert gcs_emulator not in repr(uploading)  # the forwarded environment (keys, too) is never shown
    deploy(uploading, "127.0.0.1", server["port"], replace=True)
    try:
        result = client.images.generate(model="tiny-flux", prompt="a heron", n=1, size="64x64", response_format="url")
    finally:
        deploy(server["config"], "127.0.0.1", server["port"], replace=True)
    url = result.data[0].url
    request_id = next(p.name for p in (server["data"] / "images").iterdir()
                      if url.endswith(f"/serve/{p.name}/images/generated-image-1.png"))
    assert url == f"https://storage.googleapis.com/kamui-test/serve/{request_id}/images/generated-image-1.png"
    bucket = gcs.Client(project="test", credentials=AnonymousCredentials()).bucket("kamui-test")
    uploaded = bucket.blob(f"serve/{request_id}/images/generated-image-1.png").download_as_bytes()
    assert uploaded == (server["data"] / "images" / request_id / "images/generated-image-1.png").read_bytes()
    assert png_size(uploaded) == (64, 64)


def test_openai_length_prompts_are_answered_with_what_the_model_cut(client, server):
    """gpt-image-1's longest prompt (32,000 characters; mostly Japanese, 72 KB of UTF-8, past the 64 KB
    a body had before): made, and each image says what tiny-flux's encoders cut of it; past the
    longest prompt a model of the server reads, IMG_009 on `prompt`; a multi-image answer's
    report carries the same."""
    import openai

    prompt = ("夕焼けの海に立つ白い灯台と荒れた波と雲 lighthouse" * 1100)[:32000]
    assert len(prompt.encode()) > 64 * 1024
    result = client.images.generate(model="tiny-flux", prompt=prompt, size="64x64")
    (item,) = result.data
    cuts = item.model_extra["prompt_truncated"]
    assert [(c["encoder"], c["max_tokens"], c["counted"]) for c in cuts] == [("CLIP", 77, "tokenizer"),
                                                                            ("T5", 32, "tokenizer")]
    assert all(c["tokens"] > 1000 for c in cuts) and item.revised_prompt == prompt.strip()
    with pytest.raises(openai.BadRequestError) as too_long:
        client.images.generate(model="tiny-flux", prompt="x" * (32768 * 4 + 1), size="64x64")
    assert too_long.value.body["code"] == "IMG_009" and too_long.value.body["param"] == "prompt"
    status, answer = multi(server, {"image-prompt": "a pier at night, " * 10, "models": "tiny-flux"})
    assert status == 200, answer
    assert [c["encoder"] for c in answer["report"]["prompt_truncation"]["tiny-flux"]] == ["CLIP", "T5"]


def test_errors_arrive_as_the_clients_typed_exceptions_with_the_img_code(client):
    import openai

    with pytest.raises(openai.NotFoundError) as missing:
        client.images.generate(model="no-such-model", prompt="x")
    assert missing.value.body["code"] == "IMG_002"
    with pytest.raises(openai.BadRequestError) as bad_size:
        client.images.generate(model="tiny-flux", prompt="x", size="100x64")
    assert bad_size.value.body["code"] == "IMG_017"
    with pytest.raises(openai.BadRequestError) as too_many:
        client.images.generate(model="tiny-flux", prompt="x", n=11)
    assert too_many.value.body["code"] == "IMG_001"
    with pytest.raises(openai.BadRequestError) as empty:
        client.images.generate(model="tiny-flux", prompt="   ")
    assert empty.value.body["code"] == "IMG_009" and "Traceback" not in str(empty.value.body)


def images(server, body: dict, key: str = KEY) -> tuple[int, dict]:
    return post_json(server["url"], "/v1/images/generations", body, {"Authorization": f"Bearer {key}"})


def multi(server, body: dict) -> tuple[int, dict]:
    return post_json(server["url"], "/v1/multi-image", {"image-prompt": "a pier", **body},
                     {"Authorization": f"Bearer {KEY}"})


@pytest.mark.parametrize("body, status, code, param", [
    ({"model": "tiny-flux,slow", "n": 10}, 400, "IMG_011", "model"),  # one model: no 10 x N images
    ({"model": "tiny-flux", "size": "512x512"}, 400, "IMG_017", "size"),  # past the model's max_side (256)
    ({"model": "flux-schnell", "size": "4096x4096"}, 400, "IMG_017", "size"),
    ({"model": "tiny-flux", "n": "2"}, 400, "IMG_001", "n"),  # strictly typed: no strings,
    ({"model": "tiny-flux", "n": True}, 400, "IMG_001", "n"),  # no booleans,
    ({"model": "tiny-flux", "size": "\uff16\uff14x64"}, 400, "IMG_017", "size"),  # no full-width digits
    ({"model": "tiny-flux", "stream": True}, 400, "IMG_011", "stream"),
])
def test_images_requests_past_the_apis_caps_or_loosely_typed_are_refused(server, body, status, code, param):
    answer = images(server, {"prompt": "a red fox", **body})
    assert (answer[0], answer[1]["error"]["code"], answer[1]["error"]["param"]) == (status, code, param), answer


@pytest.mark.parametrize("body, code, param", [
    ({"models": "tiny-flux,slow", "image-count": "6"}, "IMG_001", "image-count"),  # 12 images
    ({"models": "tiny-flux", "steps": "200"}, "IMG_017", "steps"),
    ({"models": "tiny-flux", "max-parallel": "64"}, "IMG_014", "max-parallel"),
    ({"models": "tiny-flux", "width": "4096"}, "IMG_017", "width"),
    ({"models": "tiny-flux", "image-count": "\uff12"}, "IMG_001", "image-count"),
    ({"models": "tiny-flux", "image-count": True}, "IMG_001", "image-count"),
])
def test_multi_image_requests_within_the_apis_own_caps(server, body, code, param):
    status, answer = multi(server, body)
    assert (status, answer["error"]["code"], answer["error"]["param"]) == (400, code, param), answer


def test_optional_fields_sent_as_null_count_as_absent_and_the_bearer_scheme_is_case_insensitive(server):
    status, answer = images(server, {"prompt": "a red fox", "model": "tiny-flux", "n": None, "size": None,
                                     "response_format": None, "quality": None, "style": None, "user": None})
    assert status == 200 and len(answer["data"]) == 1 and "b64_json" in answer["data"][0]
    status, _ = post_json(server["url"], "/v1/images/generations", {"prompt": "a fox", "model": "tiny-flux"},
                          {"Authorization": f"bearer {KEY}"})
    assert status == 200


def raw_http(server, head: str, body: bytes = b"", chunks: list[bytes] | None = None,
             pause_s: float = 0.0) -> tuple[int, str, bytes]:
    """(status, content type, body) of a request written byte by byte on a socket: what a client
    library would never send."""
    import time

    def send(sock) -> None:
        try:
            for chunk in chunks or []:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                time.sleep(pause_s)
        except OSError:
            pass  # the server answered and closed before the client finished: as it should

    with socket.create_connection(("127.0.0.1", server["port"]), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        sender = threading.Thread(target=send, args=(sock,), daemon=True)
        sender.start()  # the answer is read while the body is still being sent
        answer = b""
        while b"\r\n0\r\n\r\n" not in answer:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:  # the rest of the body reached a closed connection
                break
            if not data:
                break
            answer += data
    head_part, _, payload = answer.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers.get("content-type", ""), payload


def post_head(path: str, extra: str) -> str:
    return (f"POST {path} HTTP/1.1\nHost: x\nAuthorization: Bearer {KEY}\nContent-Type: application/json\n"
            f"Connection: close\n{extra}")


def envelope_code(payload: bytes) -> str:
    if b"\r\n" in payload.split(b"{", 1)[0]:  # a chunked answer: its first chunk's size line
        payload = payload.split(b"\r\n", 1)[1]
    return json.loads(payload[:payload.rindex(b"}") + 1])["error"]["code"]


def test_bodies_over_the_limit_declared_or_chunked_and_slow_bodies_are_refused_before_any_work(server):
    """The limit: 64 KB beside the prompt, and room for the longest prompt a model of the server
    reads (here Gemini's 32,768 tokens: 131,072 characters, 6 bytes each escaped in JSON)."""
    from cluster.entrypoints.api.schema import max_body_bytes
    from models.registry import load_registry

    limit = max_body_bytes(load_registry(server["config"].config))
    assert limit == 64 * 1024 + 6 * 131072
    made = len(list((server["data"] / "images").iterdir()))
    status, kind, payload = raw_http(server, post_head("/v1/images/generations", f"Content-Length: {limit + 1}\n"))
    assert (status, envelope_code(payload)) == (413, "IMG_011") and "json" in kind
    # chunked: no length declared; refused once the limit has arrived, while the client still sends
    status, _, payload = raw_http(server, post_head("/v1/images/generations", "Transfer-Encoding: chunked\n"),
                                  chunks=[b" " * 16384] * (limit // 16384 + 2))
    assert (status, envelope_code(payload)) == (413, "IMG_011")
    # a body that stops arriving: refused at the body timeout (2 s here), not held for ever
    status, _, payload = raw_http(server, post_head("/v1/multi-image", "Transfer-Encoding: chunked\n"),
                                  chunks=[b"{"], pause_s=4)
    assert (status, envelope_code(payload)) == (408, "IMG_011")
    # a negative length never reaches the API: Ray Serve's HTTP parser refuses it (400, its own text)
    status, _, _ = raw_http(server, post_head("/v1/images/generations", "Content-Length: -5\n"), b"{}")
    assert status == 400
    assert len(list((server["data"] / "images").iterdir())) == made and health(server)["busy"] == 0


def test_malformed_requests_are_4xx_envelopes(server):
    nested = b"[" * 20000 + b"]" * 20000
    status, _, payload = raw_http(server, post_head("/v1/images/generations", f"Content-Length: {len(nested)}\n"),
                                  nested)
    assert (status, envelope_code(payload)) == (400, "IMG_011")
    surrogate = b'{"model": "tiny-flux", "prompt": "a\\ud800b"}'
    status, _, payload = raw_http(server, post_head("/v1/images/generations", f"Content-Length: {len(surrogate)}\n"),
                                  surrogate)
    assert (status, envelope_code(payload)) == (400, "IMG_011")
    status, _, payload = raw_http(server, "GET /v1/images/generations HTTP/1.1\nHost: x\nConnection: close\n")
    assert (status, envelope_code(payload)) == (405, "IMG_011")
    status, _, payload = raw_http(server, "GET /v2/nothing HTTP/1.1\nHost: x\nConnection: close\n")
    assert (status, envelope_code(payload)) == (404, "IMG_011")


def test_failures_answer_what_a_client_can_act_on_and_the_rest_goes_to_the_log(server):
    status, answer = images(server, {"prompt": "a red fox", "model": "failing"})
    error = answer["error"]
    assert (status, error["code"]) == (500, "IMG_020") and "reference" in error["message"]
    assert "scripted failure" not in error["message"] and "Error" not in error["message"]
    assert list((server["data"] / "images").glob(".*")) == []  # its run's journal went with the request
    # `auto` with no model available here: the answer names the API's field, not a CLI flag or a download
    status, answer = multi(server, {})
    error = answer["error"]
    assert (status, error["code"], error["param"]) == (404, "IMG_002", "models")
    assert "--" not in error["message"] and "huggingface" not in error["message"]
    status, answer = multi(server, {"models": "tiny-flux", "width": "100"})
    assert (status, answer["error"]["param"]) == (400, "width")
    assert answer["error"]["message"] == "width: 100 is not a multiple of 16; try 96."


def test_one_image_is_not_scored_by_a_clip_model(registry):
    from cluster.entrypoints.api.schema import parse_images_request, raw_inputs

    def scorer(n: int) -> str | None:
        body = parse_images_request({"model": "tiny-flux", "prompt": "a fox", "n": n, "size": "64x64"}, registry)
        return raw_inputs(body, "/srv/out", "tiny-clip")["scorer"]

    assert scorer(1) == "none" and scorer(2) == "tiny-clip"  # nothing to choose between, no score in the answer


def test_run_messages_in_the_apis_terms():
    from cluster.entrypoints.api.wording import public_error
    from cluster.errors import ImageGenError

    def said(code: str, message: str, route: str = "multi-image") -> tuple[str, str | None]:
        error = public_error(ImageGenError(code, message), route)
        return error.message, error.param

    assert said("IMG_017", "--steps 0 is out of range; give 1 to 200.") == \
        ("steps 0 is out of range; give 1 to 200.", "steps")
    assert said("IMG_009", "--image-prompt is empty; describe the image to generate.", "images") == \
        ("prompt is empty; describe the image to generate.", "prompt")
    disk, _ = said("IMG_005", "/srv/kamui/serve has 1.0 MB free; ... Free some space or choose another --folder-name.")
    assert "/srv" not in disk and "--" not in disk and "reference" in disk
    died, _ = said("IMG_020", "ActorDiedError: The actor died unexpectedly. actor_id=9f3e pid=4242 ip=10.0.0.7")
    assert "actor" not in died.lower() and "4242" not in died and "10.0.0.7" not in died
    budget, _ = said("IMG_029", "the plan is estimated at $0.06, over --budget-usd $0.05 (imagen4-ultra: ...); "
                                "ask for fewer images or cheaper models, or use --budget-policy degrade.")
    assert "--" not in budget and "estimated at $0.06," in budget and "left today ($0.05)" in budget
    large, _ = said("IMG_029", "the plan is estimated at $1,250.00, over --budget-usd $1,200.00 (...); ask ...")
    assert "estimated at $1,250.00," in large and "left today ($1,200.00)" in large


def test_no_schema_is_served_and_the_key_variable_leaves_the_environment(server, monkeypatch):
    from cluster.entrypoints.api.server import load_keys, parse_public_url
    from cluster.errors import ImageGenError

    status, body = get(f"{server['url']}/openapi.json")
    assert status == 404 and b"paths" not in body and json.loads(body)["error"]["code"] == "IMG_011"
    monkeypatch.setenv("KAMUI_TEST_KEYS", f"{KEY},{OTHER_KEY}")
    assert load_keys("KAMUI_TEST_KEYS", None) == [KEY, OTHER_KEY]
    assert "KAMUI_TEST_KEYS" not in os.environ  # an embedded Ray's workers will not inherit it
    assert parse_public_url("https://images.example.com/kamui/") == "https://images.example.com/kamui"
    with pytest.raises(ImageGenError):
        parse_public_url("images.example.com")


def test_models_and_health(client, server):
    import openai

    ids = {m.id for m in client.models.list()}
    assert {"tiny-flux", "flux-schnell", "imagen4-fast"} <= ids
    # one model, by its id or an alias (a client with a fixed model name works unchanged)
    assert client.models.retrieve("flux-schnell").aliases == ["dall-e-2", "dall-e-3", "gpt-image-1"]
    assert client.models.retrieve("client-fixed-model").id == "tiny-flux"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert missing.value.body["code"] == "IMG_002"
    result = client.images.generate(model="client-fixed-model", prompt="a lighthouse", size="64x64")
    assert len(result.data) == 1
    with urllib.request.urlopen(f"{server['url']}/healthz", timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"


def test_no_key_a_wrong_key_or_a_key_in_another_header_is_401_and_makes_nothing(server):
    def post(headers: dict) -> int:
        body = json.dumps({"model": "tiny-flux", "prompt": "a red fox", "size": "64x64"}).encode()
        request = urllib.request.Request(f"{server['url']}/v1/images/generations", data=body, method="POST",
                                         headers={"Content-Type": "application/json", **headers})
        try:
            urllib.request.urlopen(request, timeout=30)
        except urllib.error.HTTPError as exc:
            assert json.loads(exc.read())["error"]["type"] == "authentication_error"
            return exc.code
        return 200

    made = len(list((server["data"] / "images").iterdir()))
    assert post({}) == 401
    assert post({"Authorization": "Bearer sk-wrong-key-0123456789"}) == 401
    assert post({"X-API-Key": KEY}) == 401
    assert len(list((server["data"] / "images").iterdir())) == made


def test_multi_image_endpoint_writes_the_design_cards_layout(server):
    body = json.dumps({"image-prompt": "a harbour at night", "models": "tiny-flux", "image-count": "2",
                       "folder-name": "scene-1", "seed": "9"}).encode()
    request = urllib.request.Request(f"{server['url']}/v1/multi-image", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        result = json.loads(response.read())
    assert result["report"]["generation_summary"]["successful_generations"] == 2
    assert result["outputs"]["images-completed"] == "2" and len(result["image_urls"]) == 2
    folder = server["data"] / "multi-image" / digest(KEY)[:24] / "scene-1"
    assert (folder / "images/generated-image.png").is_file() and (folder / "metadata/generation-report.json").is_file()
    # the answer speaks of the API's URLs, never of the server's paths, nodes or addresses
    text = json.dumps(result)
    assert str(server["data"]) not in text and "node_id" not in text and "gcs_address" not in text
    assert json.loads(result["outputs"]["image-urls"]) == result["image_urls"]
    assert result["report"]["request"]["folder_name"] == "."


def get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_multi_image_folders_are_their_keys_own_need_the_key_and_expire(server):
    import os

    def post(key: str, body: dict) -> tuple[int, dict]:
        return post_json(server["url"], "/v1/multi-image", {"image-prompt": "a quiet pier", "models": "tiny-flux",
                                                             **body}, {"Authorization": f"Bearer {key}"})

    status, mine = post(KEY, {"folder-name": "scene-2", "seed": "1"})
    assert status == 200
    url = mine["image_urls"][0]
    assert get(url)[0] == 401  # a guessable name: never without the key
    assert get(url, {"Authorization": f"Bearer {OTHER_KEY}"})[0] == 404  # another key does not see it
    status, png = get(url, {"Authorization": f"Bearer {KEY}"})
    assert status == 200 and png_size(png) == (64, 64)
    # the other key's folder of the same name is its own: the first is not overwritten
    assert post(OTHER_KEY, {"folder-name": "scene-2", "seed": "2"})[0] == 200
    assert get(url, {"Authorization": f"Bearer {KEY}"})[1] == png
    for name in ("", "  ", "../scene-2", ".hidden", "a/b", "x" * 129):
        status, body = post(KEY, {"folder-name": name})
        assert status == 400 and body["error"]["code"] == "IMG_016", name
    # past the time to live, it is gone
    folder = server["data"] / "multi-image" / digest(KEY)[:24] / "scene-2"
    os.utime(folder, (1, 1))
    assert get(url, {"Authorization": f"Bearer {KEY}"})[0] == 404


def test_the_data_directory_sweeps_expired_folders_and_one_folder_has_one_writer(tmp_path):
    import os

    from cluster.entrypoints.api.storage import DataDir
    from cluster.errors import ImageGenError

    abandoned = [tmp_path / "images/.abc.multi-image-journal/parts", tmp_path / "multi-image/owner/.x.multi-image-staging-1"]
    for leftover in abandoned:
        leftover.mkdir(parents=True)
    data = DataDir(tmp_path, ttl_s=60)
    data.start()  # a request of an earlier server left these: nothing runs yet, so they go
    assert not any(p.exists() for p in abandoned)
    old, fresh = data.multi_folder("owner", "old"), data.multi_folder("owner", "fresh")
    _, request = data.new_request()
    for folder in (old, fresh, request):
        (folder / "images").mkdir(parents=True)
    os.utime(old, (1, 1))
    os.utime(request, (1, 1))
    data.claim(fresh)
    with pytest.raises(ImageGenError) as busy:
        data.claim(fresh)
    assert busy.value.code == "IMG_016"
    journal = fresh.parent / ".fresh.multi-image-journal"
    journal.mkdir()
    data.release(fresh, keep=True)
    assert not journal.exists() and fresh.exists()  # what the run left beside it goes with the request
    data.sweep_if_due()
    assert not old.exists() and not request.exists() and fresh.exists()


def health(server) -> dict:
    with urllib.request.urlopen(f"{server['url']}/healthz", timeout=10) as response:
        return json.loads(response.read())


def wait_for(condition, timeout: float = 30.0) -> bool:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_past_the_queue_exactly_the_extra_requests_get_429_and_clients_that_leave_free_their_slots(server):
    """QUEUE + 3 clients at once on a model whose calls hang: QUEUE held, exactly 3 refused. Then the
    held clients leave: their runs are stopped (calls cancelled at the model), the slots are free
    at once (not when the calls would have ended), and nothing of theirs stays on disk."""
    import http.client

    from tests.scripted_backend import read_log

    body = json.dumps({"model": "slow", "prompt": "a slow lantern", "size": "32x32", "response_format": "url"})
    answers: list = []
    connections = [http.client.HTTPConnection("127.0.0.1", server["port"], timeout=60) for _ in range(QUEUE + 3)]

    def call(connection) -> None:
        try:
            connection.request("POST", "/v1/images/generations", body=body,
                               headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
            response = connection.getresponse()
            answers.append((response.status, json.loads(response.read())["error"]["code"]))
        except OSError:
            pass  # closed by the test below: a client that left

    threads = [threading.Thread(target=call, args=(c,), daemon=True) for c in connections]
    for thread in threads:
        thread.start()
    assert wait_for(lambda: len(answers) == 3 and health(server)["busy"] == QUEUE), (answers, health(server))
    assert answers == [(429, "IMG_006")] * 3
    def calls(event: str) -> int:
        return len([e for e in read_log(server["slow_log"]) if e["event"] == event])

    assert wait_for(lambda: calls("start") >= 2), calls("start")
    before = {p.name for p in (server["data"] / "images").iterdir()}
    for connection in connections:
        connection.sock.shutdown(socket.SHUT_RDWR)
        connection.close()
    assert wait_for(lambda: health(server)["busy"] == 0, timeout=20), health(server)
    assert wait_for(lambda: calls("cancelled") == calls("start") == calls("end"), timeout=10)  # none ran on
    assert {p.name for p in (server["data"] / "images").iterdir()} <= before  # nothing left behind
    assert len(answers) == 3


@pytest.mark.usefixtures("ray_session")
def test_what_a_request_leaves_in_a_long_running_server_is_bounded():
    """Every run looks up the cluster's resident registry (several times): the server's replica does
    it for every request, for months. A lookup must not leave anything behind (it once made a new
    Ray actor class each time, ~15 KB a lookup that Ray never frees)."""
    import gc
    import tracemalloc

    from cluster.engine.resident import registry_actor

    for _ in range(5):  # the first lookups load what every later one shares
        registry_actor()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(40):
            registry_actor()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 16 * 1024, f"{grown / 40:.0f} bytes kept per lookup"


def test_answers_that_a_retry_cannot_change_tell_clients_not_to_retry():
    """The openai client retries 429 and 5xx twice by default, each retry a whole new run: a
    timeout, a spent budget or a full disk would only be met again."""
    from cluster.entrypoints.api.app import error_response
    from cluster.errors import ImageGenError

    def retry_header(code: str) -> str | None:
        return error_response(ImageGenError(code, "x")).headers.get("x-should-retry")

    assert [retry_header(c) for c in ("IMG_003", "IMG_029", "IMG_005", "IMG_009")] == ["false"] * 4
    assert retry_header("IMG_006") is None and retry_header("IMG_019") is None  # busy, no replica now: later may do


def post_json(url: str, path: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_second_server_never_moves_or_replaces_the_first(server, tmp_path, capsys):
    """Ray Serve keeps its first proxy: a server asked for another port would print a URL where
    nothing listens, and one asked for the same would replace the running app and its keys."""
    import dataclasses

    from cluster.entrypoints.api.server import deploy
    from cluster.entrypoints.cli import main
    from cluster.errors import ImageGenError

    keyless = dataclasses.replace(server["config"], key_digests=())
    with pytest.raises(ImageGenError) as moved:
        deploy(keyless, "127.0.0.1", free_port())
    assert moved.value.code == "IMG_011" and f"127.0.0.1:{server['port']}" in moved.value.message
    with pytest.raises(ImageGenError) as replaced:
        deploy(keyless, "127.0.0.1", server["port"])
    assert replaced.value.code == "IMG_011" and "already runs" in replaced.value.message
    status, body = post_json(server["url"], "/v1/images/generations", {"model": "tiny-flux", "prompt": "a fox"})
    assert status == 401 and body["error"]["code"] == "IMG_007"  # the first server's keys still hold
    # the command says so and prints no URL
    assert main(["serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"), "--scorer", "none"]) == 2
    out, err = capsys.readouterr()
    assert "serving" not in out and f"127.0.0.1:{server['port']}" in err and "error IMG_011" in err


def test_the_serve_command_refuses_an_open_bind_without_a_key(capsys):
    from cluster.entrypoints.cli import main

    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "error IMG_011" in capsys.readouterr().err


@pytest.mark.slow  # its own Ray and Serve: `-m slow`, and CI
def test_the_serve_command_reports_its_url_and_a_signal_answers_the_requests_in_flight(tmp_path, tiny_models):
    """SIGTERM with a request in flight (its first image made, its second hanging): the request gets
    the image it has before the process exits, nothing is stranded in hidden journal folders, and
    the proxy this command started is gone with it."""
    import yaml

    from tests.scripted_backend import read_log

    models = server_models(tmp_path)
    doc = yaml.safe_load(models.read_text())
    doc["models"]["slow"]["call_args"].update(hang_calls=[2], counter=str(tmp_path / "slow.counter"))
    models.write_text(yaml.safe_dump(doc))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KAMUI_TEST_KEY": KEY}
    env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen([sys.executable, "-m", "cluster.entrypoints.cli", "serve", "--port", str(port), "--address", "local",
                                "--api-key-env", "KAMUI_TEST_KEY", "--data-dir", str(tmp_path / "data"),
                                "--scorer", "none", "--config", str(models)],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        line = process.stdout.readline()
        assert f"serving the OpenAI Images API at http://127.0.0.1:{port}/v1" in line, process.stderr.read()[-2000:]
        server = {"url": f"http://127.0.0.1:{port}", "port": port}
        answers: list = []
        request = threading.Thread(target=lambda: answers.append(images(server, {
            "prompt": "a slow lantern", "model": "slow", "n": 2, "size": "32x32", "response_format": "url"})))
        request.start()
        log = tmp_path / "slow.jsonl"
        assert wait_for(lambda: [e["event"] for e in read_log(log)].count("end") == 1 and
                        [e["event"] for e in read_log(log)].count("start") == 2, timeout=60), read_log(log)
        os.kill(process.pid, signal.SIGTERM)
        request.join(timeout=60)
        out, err = process.communicate(timeout=90)
        assert process.returncode == 0 and "the API stopped" in out, err[-2000:]
        assert KEY not in out + err  # the key is never printed
        ((status, answer),) = answers
        assert status == 200 and len(answer["data"]) == 1, answer  # what it had when the server stopped
        hidden = [p for p in (tmp_path / "data").rglob(".*")]
        assert hidden == [], hidden
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def test_a_per_key_daily_budget_holds_each_requests_estimate_and_keeps_only_today():
    from cluster.entrypoints.api.keys import KeyBudgets
    from cluster.errors import ImageGenError

    now = [1_700_000_000.0]
    budgets = KeyBudgets(0.05, clock=lambda: now[0])
    first = budgets.reserve("key-a", 0.02)
    second = budgets.reserve("key-a", 0.02)  # a concurrent request of the same key is not refused
    third = budgets.reserve("key-a", 0.02)
    assert (first.usd, second.usd) == (0.02, 0.02) and third.usd == pytest.approx(0.01)  # what was left
    with pytest.raises(ImageGenError) as held:
        budgets.reserve("key-a", 0.01)
    assert held.value.code == "IMG_029"
    budgets.settle(first, 0.005)  # it cost less than estimated: the rest is free again
    assert budgets.reserve("key-a", 1.0).usd == pytest.approx(0.015)
    assert budgets.reserve("key-b", 0.05).usd == 0.05  # another key's day is its own
    now[0] += 86_400  # the next UTC day: a fresh budget, and yesterday's rows go
    budgets.settle(second, 0.02)
    assert budgets.reserve("key-a", 0.01).usd == 0.01
    assert budgets.rows() <= 3  # today's spent and held for key-a, and yesterday's still-held key-b request


def test_a_run_that_failed_after_generating_is_charged_for_what_it_made():
    from cluster.entrypoints.api.app import Job

    job = Job(prices={"tiny-flux": 0.004, "imagen4-fast": 0.02})
    for model in ("tiny-flux", "imagen4-fast", "tiny-flux"):
        job.on_event({"event": "image_done", "model": model})
    job.on_event({"event": "image_failed", "model": "tiny-flux"})
    assert job.result is None and job.spent() == pytest.approx(0.028)


def test_a_per_key_budget_without_keys_is_refused(capsys, tmp_path):
    from cluster.entrypoints.cli import main

    assert main(["serve", "--budget-usd-per-key-day", "1", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error IMG_011" in err and "--budget-usd-per-key-day" in err


def test_stopping_the_server_stops_the_serve_proxy_it_started(server):
    """Last in this module: it ends the module's server. A proxy left running would keep the next
    server on its address (0.0.0.0 included) whatever that one asked for."""
    from cluster.entrypoints.api.server import _running_serve, undeploy

    assert server["deployment"].started_serve
    undeploy(server["deployment"])
    assert _running_serve() is None
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server["port"]), timeout=2):
        pass
