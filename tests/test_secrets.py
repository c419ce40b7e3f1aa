"""Secrets: text that came back from a remote service (error bodies that echo the request, raw
answers) is stored in the cache and printed with the API key redacted.

The Gemini provider runs its real google-genai client against a local server on 127.0.0.1 whose
error bodies echo the request's headers and URL, key included, as some proxies and gateways do.
"""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from click.testing import CliRunner

from extract.cache import Feature, FeatureCache, ShardWriter
from extract.media import Clip
from extract.registry import ExtractionError, build, load_all
from extract.safeio import REDACTED, redact
from extract.vlm.prompt import DEFAULT_CLASSES

load_all()
KEY = "AIzaSyTEST-echoed-key-0123456789abcdefgh"


class EchoServer:
    """generateContent answers with ``status`` and an error body quoting the request's headers and
    URL; with status 200 it answers a valid JSON answer whose reasoning quotes the key."""

    def __init__(self):
        self.status = 500
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.calls += 1
                key = self.headers.get("x-goog-api-key", "")
                if outer.status == 200:
                    answer = {"reasoning": f"request had x-goog-api-key={key}",
                              "scores": {c: 0.1 for c in DEFAULT_CLASSES}, "label": "happy"}
                    payload = {"candidates": [{"content": {"role": "model", "parts": [{"text": json.dumps(answer)}]},
                                               "finishReason": "STOP"}], "modelVersion": "echo"}
                else:
                    echo = (f"upstream refused POST {self.path}?key={key} with headers {dict(self.headers)}; "
                            f"Authorization: Bearer {key}")
                    payload = {"error": {"code": outer.status, "message": echo, "status": "INTERNAL"}}
                data = json.dumps(payload).encode()
                self.send_response(outer.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echo(monkeypatch, tmp_path):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # slot lock files of this test only
    server = EchoServer()
    yield server
    server.close()


def clip(cid="c1"):
    rng = np.random.default_rng(0)
    return Clip(id=cid, path=f"/nonexistent/{cid}.mkv", frames=rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8),
                frame_times=np.arange(4) / 5.0, audio=np.zeros(1600, np.float32), text="hi", text_source="csv:t")


def test_redact_env_keys_given_secrets_and_key_shaped_text(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "gem-secret-value")
    monkeypatch.setenv("GOOGLE_API_KEY", "goog-secret-value")
    text = ("a gem-secret-value b goog-secret-value c my-own-token "
            "GET /v1beta/models/m:generateContent?alt=sse&key=QUERYKEY&x=1 "
            "{'x-goog-api-key': 'HEADERKEY'} x-goog-api-key=EQKEY X-Goog-Api-Key: COLONKEY "
            "api_key=APIKEY1 \"api-key\": \"APIKEY2\" Authorization: Bearer BEARERTOKEN "
            "AIzaSyB0123456789abcdefghijklmnopqrstuv")
    out = redact(text, secrets=("my-own-token",))
    for secret in ("gem-secret-value", "goog-secret-value", "my-own-token", "QUERYKEY", "HEADERKEY", "EQKEY",
                   "COLONKEY", "APIKEY1", "APIKEY2", "BEARERTOKEN", "AIzaSyB0123456789"):
        assert secret not in out, secret
    assert out.count(REDACTED) == 11
    assert "&x=1" in out and "alt=sse" in out and "Authorization: Bearer [REDACTED]" in out
    assert redact("monkey=banana, no key here") == "monkey=banana, no key here"
    assert redact(out) == out  # redacting twice changes nothing


def test_shard_writer_stores_failure_reasons_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    fs = FeatureCache(tmp_path / "cache").create("vlm-0123456789", {"config_hash": "0123456789", "kind": "record"})
    w = ShardWriter(fs, "record")
    w.add("a", Feature(record={"label": "happy"}))
    w.fail("b", f"proxy said: bad key {KEY} (x-goog-api-key: {KEY})")
    w.flush()
    assert fs.failures()["b"] == "proxy said: bad key [REDACTED] (x-goog-api-key: [REDACTED])"
    for f in fs.path.rglob("*"):
        assert KEY.encode() not in f.read_bytes()


def test_gemini_error_echoing_the_request_never_shows_the_key(echo):
    ex = build(f"vlm:provider=gemini,media=frames,frames=2,retries=1,backoff=0.01,timeout=5,base_url={echo.url}")
    ex.ensure_loaded()
    for status in (500, 400):  # retried then given up, and refused at once
        echo.status, before = status, echo.calls
        with pytest.raises(ExtractionError) as exc:
            ex.extract(clip())
        msg = str(exc.value)
        assert str(status) in msg and "upstream refused" in msg and REDACTED in msg
        assert KEY not in msg and KEY[:12] not in msg
        assert echo.calls - before == (2 if status == 500 else 1)
    echo.status = 200  # a raw answer that quotes the key: the record keeps it redacted
    rec = ex.extract(clip()).record
    assert rec["label"] == "happy" and KEY not in json.dumps(rec) and "x-goog-api-key=[REDACTED]" in rec["raw"]
    ex.close()


def test_extract_and_cache_info_print_and_store_no_key(echo, tmp_path):
    import cli
    from extract.synth import make_clip

    vids = tmp_path / "videos"
    make_clip(vids / "k0.mp4", seconds=0.4, size=(32, 32))
    cache = tmp_path / "cache"
    echo.status = 503
    result = CliRunner().invoke(cli.main, ["extract", str(vids), "--cache", str(cache), "--features",
                                           f"vlm:provider=gemini,retries=0,backoff=0.01,base_url={echo.url}"],
                                catch_exceptions=False)
    assert result.exit_code == 1, result.output  # every attempted clip failed
    assert "upstream refused" in result.output and KEY not in result.output
    fc = FeatureCache(cache)
    reason = fc.feature_set(fc.resolve("vlm")).failures()["k0"]
    assert "upstream refused" in reason and KEY not in reason and f"key={REDACTED}" in reason
    for f in cache.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f
    info = CliRunner().invoke(cli.main, ["cache", "info", "--cache", str(cache), "--failures"],
                              catch_exceptions=False)
    assert info.exit_code == 0 and "upstream refused" in info.output and KEY not in info.output
