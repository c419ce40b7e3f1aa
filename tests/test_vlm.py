"""`vlm`: the prompt, answer parsing, and every provider through its real code path.

Gemini: the real google-genai client talks to a local HTTP server on 127.0.0.1 (``base_url``) that
answers its REST calls with scripted replies: a good answer, a 429 then success, malformed JSON, a
timeout. The local VLM: a tiny random Qwen2.5-VL built from a config (hidden size 16, 2 layers)
and loaded by path. JSONL: imported answers.
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from click.testing import CliRunner

from extract.cache import FeatureCache
from extract.media import Clip
from extract.registry import ExtractionError, SpecError, build, load_all
from extract.vlm.answer import AnswerError, parse_answer
from extract.vlm.limits import GiveUp, Slots, with_retries
from extract.vlm.prompt import DEFAULT_CLASSES, load_prompt, preference_rule

load_all()
KEY = "test-key-do-not-store-0123456789"
CLASSES = list(DEFAULT_CLASSES)


def answer(label="happy", **scores):
    s = {c: 0.0 for c in CLASSES}
    s.update(scores or {label: 0.9})
    return json.dumps({"reasoning": "AU6 and AU12 rise together: a genuine smile.", "scores": s, "label": label})


class GeminiServer:
    """Answers POST .../models/<model>:generateContent from a script of replies, in order, and the
    Files API the way Google's server does: a resumable upload (start -> upload URL in a header ->
    chunks with X-Goog-Upload-Command, the last one 'finalize'), GET of the file's processing state
    (``file_states`` in order, then ACTIVE), DELETE."""

    def __init__(self):
        self.script = []
        self.requests = []
        self.uploads = {}  # file name -> bytes received
        self.file_states = ["PROCESSING"]
        self.deleted = []
        self.upload_starts = []
        self.gets = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _json(self, code, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _file(self, name, state):
                return {"name": name, "uri": f"{outer.url}/v1beta/{name}", "mimeType": outer.upload_mime,
                        "state": state, "sizeBytes": str(len(outer.uploads.get(name, b"")))}

            def do_GET(self):
                name = "files/" + self.path.split("?")[0].rsplit("/files/", 1)[-1]
                outer.gets.append(self.path)
                state = outer.file_states.pop(0) if outer.file_states else "ACTIVE"
                self._json(200, self._file(name, state))

            def do_DELETE(self):
                outer.deleted.append("files/" + self.path.split("?")[0].rsplit("/files/", 1)[-1])
                self._json(200, {})

            def do_POST(self):
                n = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(n)
                if self.path.startswith("/upload/"):  # start of a resumable upload
                    outer.upload_starts.append({"headers": dict(self.headers), "body": json.loads(raw or b"{}")})
                    outer.upload_mime = self.headers.get("X-Goog-Upload-Header-Content-Type")
                    name = f"files/f{len(outer.uploads) + 1}"
                    outer.uploads[name] = b""
                    return self._json(200, {}, {"x-goog-upload-url": f"{outer.url}/session/{name}",
                                                "x-goog-upload-status": "active"})
                if self.path.startswith("/session/"):
                    name = self.path[len("/session/"):]
                    outer.uploads[name] += raw
                    final = "finalize" in self.headers.get("X-Goog-Upload-Command", "")
                    payload = {"file": self._file(name, "PROCESSING")} if final else {}
                    return self._json(200, payload, {"x-goog-upload-status": "final" if final else "active"})
                body = json.loads(raw or b"{}")
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                step = outer.script.pop(0) if outer.script else ("ok", answer())
                kind, value = step
                if kind == "sleep":
                    time.sleep(value)
                    kind, value = "ok", answer()
                if kind == "status":
                    code, headers = value
                    data = json.dumps({"error": {"code": code, "message": "slow down" if code == 429 else "oops",
                                                 "status": "RESOURCE_EXHAUSTED" if code == 429 else "INTERNAL"}}).encode()
                    self.send_response(code)
                    for k, v in headers.items():
                        self.send_header(k, v)
                else:
                    data = json.dumps({"candidates": [{"content": {"role": "model", "parts": [{"text": value}]},
                                                       "finishReason": "STOP"}],
                                       "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 20,
                                                         "totalTokenCount": 120},
                                       "modelVersion": "gemini-local-test"}).encode()
                    self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gemini(monkeypatch, tmp_path):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # slot lock files of this test only
    server = GeminiServer()
    yield server
    server.close()


def clip(cid="c1", text="I passed the exam!", n=6):
    rng = np.random.default_rng(0)
    return Clip(id=cid, path=f"/nonexistent/{cid}.mkv", frames=rng.integers(0, 255, (n, 48, 64, 3), dtype=np.uint8),
                frame_times=np.arange(n) / 5.0, audio=(0.1 * rng.standard_normal(16000)).astype(np.float32),
                text=text, text_source="csv:t.csv")


def mime(part):
    inline = part["inlineData"]
    return inline.get("mimeType") or inline.get("mime_type")


def gem(server, extra=""):
    spec = f"vlm:provider=gemini,media=frames,frames=3,backoff=0.01,timeout=5,base_url={server.url}{extra}"
    return build(spec).ensure_loaded()


# -- prompt and answers -----------------------------------------------------------------------------
def test_default_prompt_classes_preference_and_hash(tmp_path):
    p = load_prompt(None, CLASSES)
    text = p.render("Ich habe es geschafft")
    assert "micro-expression" in text and "head pose" in text.lower() and "Ich habe es geschafft" in text
    assert "neutral, angry, happy, sad, worried, surprise" in text
    assert '"worried" has a lower priority' in text and '"sad", "surprise" or "neutral"' in text
    assert json.loads(text[text.index('"scores": ') + 10:].split("\n")[0].rstrip(",")) == {c: 0.0 for c in CLASSES}
    assert "(none)" in p.render(None)
    assert p.hash == load_prompt(None, CLASSES).hash != load_prompt(None, CLASSES[:5] + ["fear"]).hash
    assert preference_rule(["angry", "happy", "sad"], "worried", ("sad",)) == ""
    mine = tmp_path / "p.txt"
    mine.write_text("Classes: $classes. Say JSON. Subtitles: $transcript")
    assert load_prompt(str(mine), CLASSES).render("hi") == "Classes: neutral, angry, happy, sad, worried, surprise. Say JSON. Subtitles: hi"
    (tmp_path / "bad.txt").write_text("no placeholder")
    with pytest.raises(ValueError, match=r"\$transcript"):
        load_prompt(str(tmp_path / "bad.txt"), CLASSES)


def test_parse_answer_lenient_wrapping_strict_content():
    good = parse_answer("Sure!\n```json\n" + answer("sad", sad=0.7, worried=0.6) + "\n```", CLASSES)
    assert good["label"] == "sad" and good["scores"]["sad"] == 0.7 and list(good["scores"]) == CLASSES
    assert parse_answer('{"label": "HAPPY"}', CLASSES)["label"] == "happy"
    partial = parse_answer('{"scores": {"angry": 3, "sad": 1, "calm": 5}}', CLASSES)
    assert partial["label"] == "angry" and partial["scores"]["neutral"] == 0.0
    assert any("calm" in n for n in partial["notes"]) and any("highest score" in n for n in partial["notes"])
    with pytest.raises(AnswerError, match="not a valid JSON.*raw: 'The person looks happy"):
        parse_answer("The person looks happy {but not json", CLASSES)
    with pytest.raises(AnswerError, match="unknown class 'contempt'"):
        parse_answer('{"label": "contempt", "reasoning": "x"}', CLASSES)


def test_retry_helper_backoff_and_give_up():
    calls, waits = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("429")
        return "ok"

    def classify(exc):
        return True, 5.0 if len(calls) == 2 else None, str(exc)

    assert with_retries(flaky, classify, retries=5, backoff=1.0, sleep=waits.append) == ("ok", 3)
    assert 0.75 <= waits[0] <= 1.25 and waits[1] == 5.0  # exponential, jittered; server hint honoured
    with pytest.raises(GiveUp, match="gave up after 2 attempts"):
        with_retries(lambda: 1 / 0, lambda e: (True, None, "boom"), retries=1, backoff=0, sleep=lambda s: None)
    with pytest.raises(GiveUp, match="fatal"):
        with_retries(lambda: 1 / 0, lambda e: (False, None, "fatal"), retries=9, sleep=lambda s: None)


def test_slots_limit_holders_across_open_files(tmp_path):
    slots = Slots("t", 1, folder=tmp_path, poll=0.01)
    order = []

    def worker(name):
        with slots.hold():
            order.append(("in", name))
            time.sleep(0.15)
            order.append(("out", name))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert [k for k, _ in order] == ["in", "out", "in", "out"]  # never two inside at once


# -- gemini through the real SDK --------------------------------------------------------------------
def test_gemini_good_answer_request_shape_and_key_never_stored(gemini, tmp_path):
    gemini.script = [("ok", answer("happy", happy=0.8, neutral=0.2))]
    ex = gem(gemini)
    feat = ex.extract(clip())
    rec = feat.record
    assert rec["label"] == "happy" and rec["scores"]["happy"] == 0.8 and rec["model"] == "gemini-local-test"
    assert rec["prompt_hash"] == ex.prompt.hash and rec["transcript_source"] == "csv:t.csv"
    assert json.loads(rec["raw"])["label"] == "happy"
    req = gemini.requests[0]
    assert req["path"].endswith("/models/gemini-2.5-flash:generateContent")
    assert req["headers"].get("x-goog-api-key") == KEY  # the SDK sends it; we never keep it
    parts = req["body"]["contents"][0]["parts"]
    mimes = [mime(p) for p in parts if "inlineData" in p]
    assert mimes == ["image/jpeg"] * 3 + ["audio/wav"]
    assert "I passed the exam!" in parts[-1]["text"]
    cfg = req["body"]["generationConfig"]
    assert cfg["responseMimeType"] == "application/json"
    assert cfg["responseSchema"]["properties"]["label"]["enum"] == CLASSES
    assert KEY not in json.dumps(rec) and KEY not in json.dumps(ex.provenance()) and KEY not in repr(ex.key_payload())
    ex.close()


def test_gemini_429_then_success_and_5xx_exhausted(gemini):
    gemini.script = [("status", (429, {"Retry-After": "0"})), ("status", (503, {})), ("ok", answer("sad"))]
    ex = gem(gemini)
    rec = ex.extract(clip()).record
    assert rec["label"] == "sad" and rec["meta"]["attempts"] == 3 and len(gemini.requests) == 3
    gemini.script = [("status", (500, {}))] * 3
    with pytest.raises(ExtractionError, match=r"500.*gave up after 3 attempts"):
        build(f"vlm:provider=gemini,media=frames,frames=3,backoff=0.01,retries=2,base_url={gemini.url}") \
            .ensure_loaded().extract(clip())
    gemini.script = [("status", (400, {}))]
    n = len(gemini.requests)
    with pytest.raises(ExtractionError, match="400"):
        ex.extract(clip())
    assert len(gemini.requests) == n + 1  # a client error is not retried
    ex.close()


def test_gemini_malformed_json_is_a_failure_keeping_raw_text(gemini):
    gemini.script = [("ok", '{"reasoning": "looks sad", "label": "sad"'), ("ok", '{"label": "bored"}')]
    ex = gem(gemini)
    with pytest.raises(ExtractionError, match=r"not a valid JSON object; raw: .*looks sad"):
        ex.extract(clip())
    with pytest.raises(ExtractionError, match="unknown class 'bored'"):
        ex.extract(clip())
    ex.close()


def test_gemini_timeout_retried_then_recorded(gemini):
    gemini.script = [("sleep", 1.5), ("sleep", 1.5)]
    ex = build(f"vlm:provider=gemini,media=frames,frames=2,timeout=0.4,retries=1,backoff=0.01,"
               f"base_url={gemini.url}").ensure_loaded()
    t0 = time.perf_counter()
    with pytest.raises(ExtractionError, match="timed out.*gave up after 2 attempts"):
        ex.extract(clip())
    assert time.perf_counter() - t0 < 5
    gemini.script = [("sleep", 1.0)]  # a timeout, then the default good answer
    assert ex.extract(clip()).record["label"] == "happy"
    ex.close()


def test_gemini_sends_the_media_file_when_it_can(gemini, tmp_path):
    from extract.synth import make_clip

    path = make_clip(tmp_path / "v.mp4", seconds=0.4, size=(32, 32))
    ex = build(f"vlm:provider=gemini,backoff=0.01,base_url={gemini.url}").ensure_loaded()
    assert ex.needs == ("text",)  # media=video: nothing decoded up front
    ex.extract(Clip(id="v", path=str(path), text=None))
    parts = gemini.requests[-1]["body"]["contents"][0]["parts"]
    assert mime(parts[0]) == "video/mp4" and "(none)" in parts[-1]["text"]
    # a container Gemini does not take inline (mkv): decoded here and sent as frames + audio
    mkv = make_clip(tmp_path / "w.mkv", seconds=0.6, size=(32, 32))
    ex.extract(Clip(id="w", path=str(mkv), text="x"))
    mimes = [mime(p) for p in gemini.requests[-1]["body"]["contents"][0]["parts"] if "inlineData" in p]
    assert "image/jpeg" in mimes and mimes[-1] == "audio/wav"
    ex.close()


def test_gemini_uploads_a_clip_over_the_inline_limit_through_the_files_api(gemini, tmp_path, monkeypatch):
    from extract.synth import make_clip
    from extract.vlm import gemini as gemini_provider

    monkeypatch.setattr(gemini_provider, "UPLOAD_POLL_SECONDS", 0.01)
    path = make_clip(tmp_path / "big.mp4", seconds=0.6, size=(48, 48))
    ex = build(f"vlm:provider=gemini,backoff=0.01,inline_mb=0.001,base_url={gemini.url}").ensure_loaded()
    assert ex.key == build(f"vlm:provider=gemini,base_url={gemini.url}").key  # how the file travels: not the key
    gemini.file_states = ["PROCESSING", "PROCESSING"]  # Gemini processes a video before it can be used
    rec = ex.extract(Clip(id="big", path=str(path), text="hello")).record
    assert rec["label"] == "happy" and rec["meta"]["input"] == "media file (uploaded)"
    assert gemini.uploads == {"files/f1": path.read_bytes()}  # the whole file, byte for byte
    parts = gemini.requests[-1]["body"]["contents"][0]["parts"]
    file_part = {k.replace("_", "").lower(): v for k, v in (parts[0].get("fileData") or parts[0]["file_data"]).items()}
    assert file_part == {"fileuri": f"{gemini.url}/v1beta/files/f1", "mimetype": "video/mp4"}
    assert len(gemini.gets) == 3  # polled until ACTIVE
    assert not any("inlineData" in p for p in parts) and "hello" in parts[-1]["text"]
    assert gemini.deleted == ["files/f1"]  # nothing left on the user's Files API quota
    # Gemini fails to process the file: a recorded failure of this clip, and the file is deleted too
    gemini.file_states = ["FAILED"]
    with pytest.raises(ExtractionError, match="could not process the uploaded file"):
        ex.extract(Clip(id="big2", path=str(path), text="x"))
    assert gemini.deleted == ["files/f1", "files/f2"]
    ex.close()
    # upload=false: a file over the limit goes as frames + audio instead
    no_upload = build(f"vlm:provider=gemini,backoff=0.01,inline_mb=0.001,upload=false,base_url={gemini.url}")
    no_upload.ensure_loaded()
    no_upload.extract(Clip(id="big3", path=str(path), text="x"))
    mimes = [mime(p) for p in gemini.requests[-1]["body"]["contents"][0]["parts"] if "inlineData" in p]
    assert "image/jpeg" in mimes and mimes[-1] == "audio/wav" and len(gemini.uploads) == 2
    no_upload.close()


def test_gemini_without_key_says_what_to_set(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(Exception, match="GEMINI_API_KEY"):
        build("vlm:provider=gemini").ensure_loaded()


def test_operational_options_do_not_change_the_key_but_prompt_does(tmp_path):
    a = build("vlm:provider=gemini,concurrency=2,retries=1,base_url=http://x")
    b = build("vlm:provider=gemini,timeout=3")
    assert a.key == b.key
    assert build("vlm:provider=gemini,classes=angry;happy;sad").key != a.key
    p = tmp_path / "p.txt"
    p.write_text("A $transcript")
    k1 = build(f"vlm:provider=gemini,prompt={p}").key
    p.write_text("B $transcript")
    assert build(f"vlm:provider=gemini,prompt={p}").key != k1
    with pytest.raises(SpecError, match="provider"):
        build("vlm:provider=openai")
    with pytest.raises(SpecError, match="path"):
        build("vlm:provider=jsonl")


def test_rerun_makes_no_calls_and_export_annotator(gemini, tmp_path):
    import cli
    from extract.cli_knowledge import export_annotator_cmd
    from extract.synth import make_clip

    vids = tmp_path / "videos"
    for i in range(3):
        make_clip(vids / f"k{i}.mp4", seconds=0.4, size=(32, 32), seed=i)
    gemini.script = [("ok", answer("happy")), ("ok", answer("sad", sad=0.6, worried=0.3)), ("ok", "not json")]
    cache = tmp_path / "cache"
    args = ["extract", str(vids), "--cache", str(cache), "--features",
            f"vlm:provider=gemini,backoff=0.01,base_url={gemini.url}"]
    result = CliRunner().invoke(cli.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(gemini.requests) == 3
    result = CliRunner().invoke(cli.main, args, catch_exceptions=False)
    assert len(gemini.requests) == 3  # cached: no call at all
    fc = FeatureCache(cache)
    batch = fc.read("vlm", ["k0", "k1", "k2"])
    assert [r["label"] if r else None for r in batch.data] == ["happy", "sad", None]
    assert "not json" in batch.failures["k2"]
    for f in (cache / fc.resolve("vlm")).rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes()
    out = tmp_path / "annotator.jsonl"
    result = CliRunner().invoke(export_annotator_cmd, ["--cache", str(cache), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "exported 2 answers" in result.output and "1 clips without" in result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["name"], x["label"]) for x in lines] == [("k0", "happy"), ("k1", "sad")]
    assert lines[1]["scores"]["worried"] == 0.3
    from extract.annotator import load_annotator

    ann = load_annotator(out)
    assert ann.answers["k1"].label == "sad" and 0.6 < ann.answers["k1"].confidence < 0.7


# -- jsonl import ------------------------------------------------------------------------------------
def test_jsonl_import(tmp_path):
    f = tmp_path / "answers.jsonl"
    f.write_text("\n".join([
        json.dumps({"name": "a", "label": "Happy", "scores": {"happy": 9, "sad": 1}, "reasoning": "smiles"}),
        json.dumps({"name": "b", "label": "contempt"}),
        '{"name": "c", "label": ',
        "",
    ]) + "\n")
    ex = build(f"vlm:provider=jsonl,path={f}").ensure_loaded()
    assert ex.needs == ()  # nothing is decoded
    rec = ex.extract(Clip(id="sub/a", path="x")).record
    assert rec["label"] == "happy" and rec["scores"]["happy"] == 9 and rec["reasoning"] == "smiles"
    with pytest.raises(ExtractionError, match="unknown class 'contempt'"):
        ex.extract(Clip(id="b", path="x"))
    with pytest.raises(ExtractionError, match=r"answers.jsonl:3: unreadable"):
        ex.extract(Clip(id="c", path="x"))
    with pytest.raises(ExtractionError, match="no answer for this clip"):
        ex.extract(Clip(id="d", path="x"))
    key = ex.key
    f.write_text(json.dumps({"name": "a", "label": "sad"}) + "\n")
    assert build(f"vlm:provider=jsonl,path={f}").key != key


# -- a local transformers VLM ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    """A tiny random Qwen2.5-VL (hidden 16, 2 layers) with its processor, saved like a real one."""
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(['{"reasoning": "brows", "scores": {"happy": 0.9}, "label": "happy"} neutral angry sad'],
                            trainer)
    template = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
                "{{ message['content'] }}{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}"
                "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
                "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                "{% endif %}")
    ftok = tr.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ftok.chat_template = template
    proc = tr.Qwen2_5_VLProcessor(image_processor=tr.Qwen2VLImageProcessor(min_pixels=28 * 28 * 4,
                                                                           max_pixels=28 * 28 * 16),
                                  tokenizer=ftok, video_processor=tr.Qwen2VLVideoProcessor(), chat_template=template)
    ids = {t: ftok.convert_tokens_to_ids(t) for t in specials}
    cfg = tr.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(ftok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                           fullatt_block_indexes=[1], window_size=56, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    model = tr.Qwen2_5_VLForConditionalGeneration(cfg)
    d = tmp_path_factory.mktemp("tiny-qwen25vl")
    model.save_pretrained(d)
    proc.save_pretrained(d)
    return d


def test_transformers_vlm_runs_frames_and_transcript_through_chat_template(tiny_qwen):
    ex = build(f"vlm:provider=transformers,model={tiny_qwen},frames=2,max_new_tokens=12").ensure_loaded()
    assert ex.needs == ("frames", "text")
    req = ex.request(clip(text="short"))
    assert req.frames.shape[0] == 2 and req.audio is None
    r1 = ex.provider.ask(req)
    r2 = ex.provider.ask(ex.request(clip(text="a much longer transcript with many more words in it")))
    assert r1.meta["new_tokens"] >= 1 and r2.meta["prompt_tokens"] > r1.meta["prompt_tokens"]
    assert ex.provider.ask(req).text == r1.text  # greedy decoding: same input, same answer
    # a random model does not write JSON: the clip fails with its raw text kept, the run goes on
    with pytest.raises(ExtractionError, match="transformers .*not a valid JSON object; raw:"):
        ex.extract(clip())
    assert ex.provenance()["model"]["weights_sha256"] and len(ex.provenance()["model"]["weights_sha256"]) == 64
    with pytest.raises(ExtractionError, match="nothing to show the model: no video stream"):
        ex.extract(Clip(id="a", path="a.wav", audio=np.zeros(1600, np.float32), text="x",
                        missing={"frames": "no video stream"}))


def test_transformers_vlm_runs_with_device_auto(tiny_qwen):
    """`--device auto` (the CLI default) reaches the provider as "auto": it picks cuda when present, else cpu."""
    import torch

    ex = build(f"vlm:provider=transformers,model={tiny_qwen},frames=2,max_new_tokens=4", device="auto")
    reply = ex.ensure_loaded().provider.ask(ex.request(clip()))
    assert reply.meta["new_tokens"] >= 1
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(ex.provider.model.parameters()).device.type == want
    on_cpu = build(f"vlm:provider=transformers,model={tiny_qwen},frames=2,max_new_tokens=4", device="cpu")
    if want == "cpu":  # same device, same greedy answer
        assert on_cpu.ensure_loaded().provider.ask(on_cpu.request(clip())).text == reply.text


def test_face_crops_for_the_vlm():
    from skimage.data import astronaut

    frames = np.stack([astronaut()] * 3)
    c = Clip(id="f", path="f", frames=frames, frame_times=np.arange(3) / 5.0, text="x")
    ex = build("vlm:provider=gemini,media=frames,frames=2,crop=face,crop_size=96")
    req = ex.request(c)
    assert req.frames.shape == (2, 96, 96, 3)


def test_vlm_face_crops_use_one_landmarker_opened_in_load(monkeypatch, tmp_path):
    import pickle

    from skimage.data import astronaut

    from extract import faces

    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    opened = []
    real_open = faces.MediaPipeBackend._open
    monkeypatch.setattr(faces.MediaPipeBackend, "_open", lambda self: opened.append(self) or real_open(self))
    frames = np.stack([astronaut()] * 3)
    c = Clip(id="f", path="f", frames=frames, frame_times=np.arange(3) / 5.0, text="x")
    ex = build("vlm:provider=gemini,media=frames,frames=2,crop=face,crop_size=96")
    cold = ex.request(c).frames  # before load(): a landmarker for this call only, closed after
    assert len(opened) == 1 and not opened[0].opened
    ex.ensure_loaded()
    backend = ex.face_backend
    assert len(opened) == 2 and backend.opened
    for _ in range(3):  # every clip reuses it, with the same crops as a fresh one
        assert np.array_equal(ex.request(c).frames, cold)
    assert len(opened) == 2
    clone = pickle.loads(pickle.dumps(ex))  # a worker opens its own
    assert not clone.loaded and not hasattr(clone, "face_backend") and backend.opened
    ex.close()
    assert not backend.opened
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"name": "f", "label": "happy"}) + "\n")
    jsonl = build(f"vlm:provider=jsonl,path={answers},crop=face").ensure_loaded()  # shows the model nothing
    assert not hasattr(jsonl, "face_backend") and len(opened) == 2


# -- vlm-text ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    tr = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("tiny-bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789") + ["smile"]
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    tr.BertModel(tr.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=128)).save_pretrained(d)
    tr.BertTokenizerFast(vocab_file=str(d / "vocab.txt")).save_pretrained(d)
    return d


def test_vlm_text_embeds_fresh_and_cached_reasoning(tiny_bert, tmp_path):
    import cli
    from extract.synth import make_clip

    vids = tmp_path / "videos"
    for name in ("a", "b", "c"):
        make_clip(vids / f"{name}.mp4", seconds=0.4, size=(32, 32))
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(json.dumps({"name": n, "label": lab, "reasoning": why}) for n, lab, why in [
        ("a", "happy", "a broad smile, AU6 and AU12"), ("b", "sad", "lip corners down, AU15")]) + "\n")
    cache = tmp_path / "cache"

    def run(features):
        result = CliRunner().invoke(cli.main, ["extract", str(vids), "--cache", str(cache), "--features", features],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output

    run(f"vlm:provider=jsonl,path={answers},vlm-text:model={tiny_bert}")  # same run: fresh answers
    fc = FeatureCache(cache)
    key = fc.resolve("vlm-text")
    batch = fc.read(key, ["a", "b", "c"])
    assert batch.present.tolist() == [True, True, False] and batch.data.shape[1:] == (3, 16)
    assert "no VLM answer for this clip" in batch.failures["c"] and "no answer for this clip" in batch.failures["c"]
    assert not np.allclose(batch.data[0], batch.data[1])
    vlm_key = fc.resolve("vlm")
    assert fc.feature_set(key).sources()["a"] == f"vlm:{vlm_key}"
    # a later run with another encoder config reads the answers from the cache (nothing decoded)
    run(f"vlm-text:model={tiny_bert},pooling=cls,cache={cache}")
    other = [k for k in FeatureCache(cache).keys() if k.startswith("vlm-text-") and k != key]
    assert len(other) == 1
    again = FeatureCache(cache).read(other[0], ["a", "b"])
    assert again.present.all()
    direct = build(f"vlm-text:model={tiny_bert},pooling=cls,cache={cache}").ensure_loaded()
    assert np.allclose(direct.extract(Clip(id="a", path="a")).data, again.data[0], atol=1e-6)


def test_vlm_text_looks_the_answers_up_once_per_instance(tiny_bert, tmp_path, monkeypatch):
    import pickle

    from extract.cache import Feature, put

    why = {"a": "a broad smile, AU6 and AU12", "b": "lip corners down, AU15"}
    recs = {n: Feature(record={"label": "happy", "reasoning": text}) for n, text in why.items()}
    key = put(tmp_path, "vlm", "record", recs, failures={"c": "not json"}, meta={"modality": "knowledge"})
    resolved = []
    real = FeatureCache.resolve
    monkeypatch.setattr(FeatureCache, "resolve", lambda self, name: resolved.append(name) or real(self, name))
    ex = build(f"vlm-text:model={tiny_bert},cache={tmp_path}").ensure_loaded()
    a, b = ex.extract(Clip(id="a", path="a")), ex.extract(Clip(id="b", path="b"))
    assert a.source == b.source == f"vlm:{key}" and not np.allclose(a.data, b.data)
    with pytest.raises(ExtractionError, match=f"no VLM answer for this clip in {key} \\(it failed: not json\\)"):
        ex.extract(Clip(id="c", path="c"))
    assert resolved == ["vlm"]
    clone = pickle.loads(pickle.dumps(ex))  # a worker looks the answers up itself
    assert not hasattr(clone, "_answers")
    assert np.allclose(clone.ensure_loaded().extract(Clip(id="a", path="a")).data, a.data) and len(resolved) == 2


def test_transformers_vlm_answer_recorded_when_the_model_writes_json(tiny_qwen, tmp_path):
    """The success path with a real (tiny) model: the random Qwen2.5-VL is first taught, by a few
    gradient steps, to answer this clip's exact input with one JSON object; the provider then loads
    it by path and the answer lands in the record."""
    import shutil

    import torch
    import transformers as tr

    prompt_file = tmp_path / "short.txt"
    prompt_file.write_text("Classes: $classes. Subtitles: $transcript")
    c = clip(text="so glad")
    teacher = build(f"vlm:provider=transformers,model={tiny_qwen},frames=2,prompt={prompt_file}")
    req = teacher.request(c)
    proc = tr.AutoProcessor.from_pretrained(tiny_qwen)
    model = tr.AutoModelForImageTextToText.from_pretrained(tiny_qwen)
    from PIL import Image

    images = [Image.fromarray(f) for f in req.frames]
    msgs = [{"role": "user", "content": [{"type": "image"}] * len(images) + [{"type": "text", "text": req.prompt}]}]
    prompt = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    target = json.dumps({"reasoning": "smile", "scores": {"happy": 0.9, "sad": 0.1}, "label": "happy"})
    full = proc(text=[prompt + target + "<|im_end|>"], images=images, return_tensors="pt")
    n_prompt = proc(text=[prompt], images=images, return_tensors="pt")["input_ids"].shape[1]
    labels = full["input_ids"].clone()
    labels[:, :n_prompt] = -100
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):
        loss = model(**full, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    trained = tmp_path / "taught"
    shutil.copytree(tiny_qwen, trained)
    model.save_pretrained(trained)
    ex = build(f"vlm:provider=transformers,model={trained},frames=2,prompt={prompt_file},max_new_tokens=60")
    rec = ex.ensure_loaded().extract(c).record
    assert rec["label"] == "happy" and rec["scores"]["happy"] == 0.9 and rec["reasoning"] == "smile"
    assert rec["model"] == str(trained) and rec["provider"] == "transformers" and rec["raw"] == target
