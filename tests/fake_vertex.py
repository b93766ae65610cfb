"""A stand-in for Vertex AI's image endpoints on 127.0.0.1, for the real google-genai client.

Answers `POST .../models/{model}:predict` (request `instances[0].prompt`,
`parameters.sampleCount`; response `predictions[].bytesBase64Encoded` + `mimeType`, or
`raiFilteredReason`) and `POST .../models/{model}:generateContent` (an `inlineData` part).

Behaviour per model id, set by the test in `server.modes[model]`:
  ok                     images as asked
  latency:S              ok after S seconds
  429:K                  RESOURCE_EXHAUSTED for the first K calls, then ok
  401                    UNAUTHENTICATED          403   PERMISSION_DENIED
  api_key_invalid        400 INVALID_ARGUMENT with ErrorInfo reason API_KEY_INVALID
  404                    NOT_FOUND
  filtered               every image replaced by raiFilteredReason (Gemini: finishReason IMAGE_SAFETY)
  partial_filtered       the last image of a request filtered
  hang:S                 the first call sleeps S seconds before answering, the rest are ok
  slow_first:S           like hang, but for the first call only and for any request size
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


def png_bytes(seed: int, size: int = 64) -> bytes:
    colour = ((seed * 97) % 256, (seed * 57 + 80) % 256, (seed * 31 + 160) % 256)
    image = Image.new("RGB", (size, size), colour)
    for x in range(0, size, 8):  # some structure, so the image is not flat
        for y in range(size):
            image.putpixel((x, y), (255 - colour[0], 255 - colour[1], 255 - colour[2]))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _error(code: int, status: str, message: str, reason: str | None = None) -> tuple[int, dict]:
    body = {"error": {"code": code, "message": message, "status": status}}
    if reason:
        body["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                                     "domain": "googleapis.com"}]
    return code, body


class FakeVertex:
    def __init__(self):
        self.modes: dict[str, str] = {}
        self.requests: list[dict] = []
        self.calls: dict[str, int] = {}
        self.text_answer = "a night view of Tokyo, cinematic"  # what a text model answers
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                status, payload = server.answer(self.path, body, dict(self.headers))
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): exactly what some tests want

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def start(self) -> "FakeVertex":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        with self._lock:
            self.modes.clear()
            self.requests.clear()
            self.calls.clear()

    def of(self, model: str) -> list[dict]:
        return [r for r in self.requests if r["model"] == model]

    def answer(self, path: str, body: dict, headers: dict) -> tuple[int, dict]:
        model, _, method = path.rsplit("/", 1)[-1].partition(":")
        with self._lock:
            number = self.calls.get(model, 0) + 1
            self.calls[model] = number
            self.requests.append({"t": time.time(), "path": path, "model": model, "method": method, "body": body,
                                  "api_key": headers.get("x-goog-api-key") or headers.get("X-Goog-Api-Key"),
                                  "number": number})
            mode = self.modes.get(model, "ok")
        kind, _, arg = mode.partition(":")
        if kind == "latency":
            time.sleep(float(arg))
        elif kind in ("hang", "slow_first") and number == 1:
            time.sleep(float(arg))
        elif kind == "429" and number <= int(arg):
            return _error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for aiplatform.googleapis.com.")
        elif kind == "401":
            return _error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        elif kind == "403":
            return _error(403, "PERMISSION_DENIED", "Permission denied on resource project.")
        elif kind == "api_key_invalid":
            return _error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", "API_KEY_INVALID")
        elif kind == "404":
            return _error(404, "NOT_FOUND", f"Publisher Model `{model}` was not found or your project does not have access to it.")
        if method == "predict":
            count = int(body.get("parameters", {}).get("sampleCount", 1))
            seed = int(body.get("parameters", {}).get("seed", number))
            predictions = []
            for i in range(count):
                filtered = kind == "filtered" or (kind == "partial_filtered" and i == count - 1)
                if filtered:
                    predictions.append({"raiFilteredReason": "56562880: the image was filtered by the safety policy"})
                else:
                    predictions.append({"bytesBase64Encoded": base64.b64encode(png_bytes(seed + i)).decode(),
                                        "mimeType": "image/png"})
            return 200, {"predictions": predictions}
        if method == "generateContent" and "image" not in model:  # a text model: a translation
            return 200, {"candidates": [{"content": {"role": "model", "parts": [{"text": self.text_answer}]},
                                         "finishReason": "STOP"}]}
        if method == "generateContent":
            if kind == "filtered":
                return 200, {"candidates": [{"content": {"role": "model", "parts": []}, "finishReason": "IMAGE_SAFETY"}]}
            seed = int(body.get("generationConfig", {}).get("seed", number))
            part = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png_bytes(seed)).decode()}}
            return 200, {"candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP"}]}
        return _error(404, "NOT_FOUND", f"unknown method {method}")
