"""`gemini` provider: Google Gemini through the official google-genai SDK.

The clip goes as the media file itself when Gemini takes its type: inline under ``inline_mb``,
else uploaded through the Files API (resumable upload, wait until the file is ACTIVE, delete it
after the answer); a type Gemini does not take goes as sampled JPEG frames plus the audio as WAV.
The prompt is filled in; the answer is constrained by a response schema (reasoning, one score per
class, a label from the classes).

The API key comes from GEMINI_API_KEY or GOOGLE_API_KEY; it is handed to the SDK only, never
written to the cache, the provenance, or a message: every text that came back from the service
(error bodies, the raw answer) is passed through ``safeio.redact`` before it leaves this module, as
an error body may echo the request's headers or URL. Retries (429, 5xx, timeouts) are ours
(``limits.with_retries``, on tenacity), with exponential backoff, so the SDK's own retrying is
switched off; a cross-process slot lock limits
the requests in flight (``concurrency``). ``base_url`` points the SDK at another endpoint (a proxy,
or the local server of the tests).
"""
from __future__ import annotations

import os
import re

from ..safeio import KEY_VARIABLES, redact
from . import Provider, Reply, Request, VLMCallError, VLMError, register_provider
from .inputs import jpeg, wav
from .limits import RETRY_STATUS, GiveUp, Slots, with_retries

UPLOAD_POLL_SECONDS = 2.0  # how often an uploaded video's processing state is asked for
DEFAULT_MODEL = "gemini-2.5-flash"


def api_key() -> str:
    for var in KEY_VARIABLES:
        if os.environ.get(var):
            return os.environ[var]
    raise VLMError("no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment")


def response_schema(classes):
    """reasoning first (the model thinks before it scores), then a score per class, then the label."""
    from google.genai import types

    classes = list(classes)
    return types.Schema(
        type="OBJECT",
        properties={
            "reasoning": types.Schema(type="STRING"),
            "scores": types.Schema(type="OBJECT", properties={c: types.Schema(type="NUMBER") for c in classes},
                                   required=classes, property_ordering=classes),
            "label": types.Schema(type="STRING", enum=classes),
        },
        required=["reasoning", "scores", "label"],
        property_ordering=["reasoning", "scores", "label"],
    )


def _retry_hint(exc) -> float | None:
    """Seconds the server asks us to wait: Retry-After header or RetryInfo.retryDelay."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is not None:
        value = headers.get("retry-after")
        if value:
            try:
                return float(value)
            except ValueError:
                pass
    match = re.search(r"retryDelay'?\"?:\s*'?\"?(\d+(?:\.\d+)?)s", str(getattr(exc, "details", "") or exc))
    return float(match.group(1)) if match else None


def classify(exc) -> tuple[bool, float | None, str]:
    """(retryable, wait hint, text with API keys redacted). Transport errors are recognised by class
    name: the SDK runs on httpx or on its fork httpx2, whichever is installed."""
    retryable, hint, text = _classify(exc)
    return retryable, hint, redact(text)


def _call_error(text: str) -> VLMCallError:
    return VLMCallError(redact(text))


def _classify(exc) -> tuple[bool, float | None, str]:
    from google.genai import errors

    names = {cls.__name__ for cls in type(exc).__mro__}

    if isinstance(exc, errors.APIError):
        text = f"Gemini API error {exc.code} {exc.status or ''}: {exc.message or ''}".strip()
        return exc.code in RETRY_STATUS or (exc.code or 0) >= 500, _retry_hint(exc), text
    if "TimeoutException" in names or isinstance(exc, TimeoutError):
        return True, None, f"Gemini request timed out ({type(exc).__name__})"
    if "TransportError" in names or isinstance(exc, ConnectionError):
        return True, None, f"Gemini connection error ({type(exc).__name__}: {exc})"
    return False, None, f"Gemini call failed ({type(exc).__name__}: {exc})"


@register_provider
class GeminiProvider(Provider):
    name = "gemini"

    @property
    def needs(self):
        return ("frames", "audio", "text") if self.config.media == "frames" else ("text",)

    def open(self):
        from google import genai
        from google.genai import types

        c = self.config
        http = types.HttpOptions(timeout=int(c.timeout * 1000), retry_options=types.HttpRetryOptions(attempts=1),
                                 base_url=c.base_url or None)
        self.client = genai.Client(api_key=api_key(), http_options=http)
        self.model = c.model or DEFAULT_MODEL
        self.slots = Slots(f"gemini-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.model)}", c.concurrency)

    def close(self):
        client = getattr(self, "client", None)
        if client is not None:
            try:
                client.close()
            except Exception:
                pass
            self.client = None

    def upload(self, path: str, mime: str):
        """Upload a clip through the Files API and wait until Gemini has processed it -> File."""
        import time

        c = self.config
        uploaded, _ = with_retries(lambda: self.client.files.upload(file=path, config={"mime_type": mime}),
                                   classify, retries=c.retries, backoff=c.backoff)
        deadline = time.monotonic() + c.timeout
        state = getattr(uploaded.state, "name", str(uploaded.state))
        while state == "PROCESSING":
            if time.monotonic() > deadline:
                self.forget(uploaded)
                raise _call_error(f"uploaded file {uploaded.name} still PROCESSING after {c.timeout:g} s")
            time.sleep(min(UPLOAD_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            uploaded, _ = with_retries(lambda: self.client.files.get(name=uploaded.name), classify,
                                       retries=c.retries, backoff=c.backoff)
            state = getattr(uploaded.state, "name", str(uploaded.state))
        if state != "ACTIVE":
            self.forget(uploaded)
            raise _call_error(f"Gemini could not process the uploaded file (state {state}: {uploaded.error})")
        return uploaded

    def forget(self, uploaded) -> None:
        """Delete an uploaded file (it would expire after 48 h anyway); a failure here is harmless."""
        try:
            self.client.files.delete(name=uploaded.name)
        except Exception:
            pass

    def contents(self, request: Request, uploaded=None):
        from google.genai import types

        parts = []
        if uploaded is not None:
            parts.append(types.Part.from_uri(file_uri=uploaded.uri, mime_type=uploaded.mime_type))
        elif request.media is not None:
            data, mime = request.media
            parts.append(types.Part.from_bytes(data=data, mime_type=mime))
        else:
            if request.frames is not None:
                for t, frame in zip(request.frame_times, request.frames):
                    parts.append(types.Part.from_text(text=f"frame at {float(t):.2f} s:"))
                    parts.append(types.Part.from_bytes(data=jpeg(frame), mime_type="image/jpeg"))
            if request.audio is not None and self.config.audio:
                parts.append(types.Part.from_bytes(data=wav(request.audio, request.sample_rate), mime_type="audio/wav"))
        parts.append(types.Part.from_text(text=request.prompt))
        return [types.Content(role="user", parts=parts)]

    def ask(self, request: Request) -> Reply:
        from google.genai import types

        c = self.config
        config = types.GenerateContentConfig(
            temperature=c.temperature, max_output_tokens=c.max_output_tokens, seed=c.seed,
            response_mime_type="application/json", response_schema=response_schema(c.class_list))
        uploaded = None
        try:
            if request.upload is not None:
                uploaded = self.upload(*request.upload)
            contents = self.contents(request, uploaded)

            def call():
                with self.slots.hold():
                    return self.client.models.generate_content(model=self.model, contents=contents, config=config)

            response, attempts = with_retries(call, classify, retries=c.retries, backoff=c.backoff)
        except GiveUp as exc:
            raise _call_error(str(exc)) from None
        finally:
            if uploaded is not None:
                self.forget(uploaded)
        text = redact(response.text) if response.text else response.text
        finish = None
        if response.candidates:
            reason = getattr(response.candidates[0], "finish_reason", None)
            finish = getattr(reason, "name", None) or (str(reason) if reason is not None else None)
        if not text:
            raise _call_error(f"Gemini returned no text (finish reason {finish}, "
                               f"prompt feedback {getattr(response, 'prompt_feedback', None)})")
        usage = getattr(response, "usage_metadata", None)
        meta = {"attempts": attempts, "finish_reason": finish,
                "input": _input_kind(request),
                "usage": usage.model_dump(exclude_none=True, mode="json") if usage is not None else None}
        return Reply(text=text, model=getattr(response, "model_version", None) or self.model, meta=meta)

    def provenance(self):
        return {"provider": self.name, "model": self.config.model or DEFAULT_MODEL,
                "sdk": "google-genai", "endpoint": "custom base_url" if self.config.base_url else "default"}


def _input_kind(request: Request) -> str:
    if request.upload is not None:
        return "media file (uploaded)"
    if request.media is not None:
        return "media file"
    return f"{0 if request.frames is None else len(request.frames)} frames"
