"""`vlm`: a vision-language model's opinion of each clip, cached as a record.

The model sees the clip (Gemini: the media file itself, or sampled frames + audio; a local
transformers VLM: sampled frames, whole or face crops) and a prompt filled with the class list and
the clip's transcript; it answers JSON: ``reasoning``, ``scores`` (one per class), ``label``. The
record keeps those, the raw response, the model name, the provider, the prompt hash and where the
transcript came from. An answer that is not valid JSON or names an unknown class is a recorded
failure whose reason keeps the raw text; the run goes on.

SPEC examples::

    vlm:provider=gemini,model=gemini-2.5-flash,media=video,concurrency=4
    vlm:provider=transformers,model=./Qwen2.5-VL-7B-Instruct,frames=8,crop=face
    vlm:provider=jsonl,path=answers.jsonl
    vlm:provider=gemini,classes=neutral;angry;happy;sad;worried;surprise,prompt=my_prompt.txt

``classes`` are separated by ``;`` (``,`` separates SPEC options; quote the value in a shell).
``timeout``, ``retries``, ``backoff``, ``concurrency`` and ``base_url`` change how answers are
fetched, not what they are, so they are left out of the cache key: changing them re-uses answers
already cached. Everything else (and the prompt file's content, and an imported file's content)
is in the key.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..cache import Feature
from ..registry import ExtractionError, Extractor, register
from ..vlm import PROVIDERS, Request, VLMCallError, load_providers
from ..vlm.answer import AnswerError, parse_answer
from ..vlm.inputs import face_frames, media_file, media_type, sample_frames
from ..vlm.prompt import DEFAULT_CLASSES, load_prompt, parse_classes, split_classes

# how the clip travels and how calls are made; each answer records what was sent in its meta.input
OPERATIONAL = ("timeout", "retries", "backoff", "concurrency", "base_url", "inline_mb", "upload")
load_providers()


@dataclass
class VlmConfig:
    provider: str = "gemini"  # gemini | transformers | jsonl
    model: str | None = None  # gemini model name (default gemini-2.5-flash); transformers: path or id
    path: str | None = None  # jsonl: the answers file
    classes: str = ";".join(DEFAULT_CLASSES)
    prompt: str | None = None  # prompt file (default extract/prompts/vlm_emotion.txt)
    yield_class: str | None = "worried"  # lower-priority class of the preference rule (none: no rule)
    yield_to: str = "sad;surprise;neutral"
    media: str = "video"  # gemini: video (the clip file itself; frames + audio for types Gemini does not take) | frames
    upload: bool = True  # gemini media=video: files over inline_mb go through the Files API (false: frames + audio)
    inline_mb: float = 18.0  # gemini: larger files are uploaded, not sent inline (the request limit is 20 MB)
    frames: int = 8  # frames sampled evenly over the clip (frames mode, transformers)
    crop: str = "frame"  # frame | face (the tracked largest face, MediaPipe)
    crop_size: int = 336
    margin: float = 0.3
    audio: bool = True  # gemini frames mode: send the audio as WAV too
    temperature: float = 0.0
    max_output_tokens: int = 2048
    max_new_tokens: int = 512  # transformers
    dtype: str = "auto"  # transformers: auto | float32 | bfloat16 | float16
    seed: int = 0
    timeout: float = 120.0  # seconds per request
    retries: int = 5  # on 429 / 5xx / timeouts, with exponential backoff
    backoff: float = 2.0  # first wait, seconds (doubles each retry, jittered)
    concurrency: int = 4  # requests in flight at once, across all worker processes
    base_url: str | None = None  # another endpoint for the SDK (proxy; tests)

    def validate(self):
        load_providers()
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(sorted(PROVIDERS))}, not {self.provider!r}")
        parse_classes(self.classes)
        if self.media not in ("video", "frames"):
            raise ValueError("media must be video or frames")
        if self.crop not in ("frame", "face"):
            raise ValueError("crop must be frame or face")
        if self.inline_mb < 0:
            raise ValueError("inline_mb must be >= 0")
        if self.frames < 1 or self.retries < 0 or self.concurrency < 1 or self.timeout <= 0:
            raise ValueError("frames and concurrency must be >= 1, retries >= 0, timeout > 0")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError("dtype must be auto, float32, bfloat16 or float16")
        if self.provider == "jsonl" and not self.path:
            raise ValueError("provider=jsonl needs path=ANSWERS.jsonl")
        if self.provider == "transformers" and not self.model:
            raise ValueError("provider=transformers needs model=PATH_OR_ID")

    @property
    def class_list(self) -> tuple[str, ...]:
        return parse_classes(self.classes)


@register
class VlmExtractor(Extractor):
    name = "vlm"
    modality = "knowledge"
    kind = "record"
    needs = ("frames", "audio", "text")
    handles_missing = True  # a clip without transcript or audio is still asked about
    Config = VlmConfig
    libraries = ("google-genai", "transformers", "torch", "mediapipe")
    description = ("a VLM's reasoning, per-class scores and label per clip (gemini via google-genai, a local "
                   "transformers VLM, or answers imported from JSONL)")

    def __init__(self, config=None, decode=None, device="cpu"):
        kw = {} if decode is None else {"decode": decode}
        super().__init__(config, device=device, **kw)
        provider_cls = PROVIDERS[self.config.provider]
        self.provider = provider_cls(self.config, device)
        self.needs = tuple(self.provider.needs)
        self.prompt = None if self.config.provider == "jsonl" else load_prompt(
            self.config.prompt, self.config.class_list, self.config.yield_class, split_classes(self.config.yield_to))

    def key_payload(self):
        payload = super().key_payload()
        payload["config"] = {k: v for k, v in asdict(self.config).items() if k not in OPERATIONAL}
        if self.prompt is not None:
            payload["prompt_hash"] = self.prompt.hash
            payload["decode"] = self.decode.for_needs(("frames", "audio"))  # also the fallback of media=video
        payload.update(self.provider.key_extra())
        return payload

    def load(self):
        if self._crops_faces():  # one landmarker for every clip of this process
            from .. import faces

            self.face_backend = faces.open_backend("mediapipe")
        self.provider.open()

    def _crops_faces(self) -> bool:
        return self.config.crop == "face" and self.config.provider != "jsonl"

    def preflight(self, load: bool) -> None:
        if self.config.provider == "gemini":  # no key: a usage error before any clip, not one per clip
            from ..vlm.gemini import api_key

            api_key()
        super().preflight(load)

    def __getstate__(self):
        # load() opens the provider in place (client, model): a worker gets a fresh, unopened one;
        # the face landmarker load() made is left behind by the base class
        state = super().__getstate__()
        state["provider"] = type(self.provider)(self.config, self.device)
        return state

    def close(self):
        backend = getattr(self, "face_backend", None)
        if backend is not None:
            backend.close()
        self.provider.close()
        self.loaded = False

    def model_provenance(self):
        out = dict(self.provider.provenance())
        out["classes"] = list(self.config.class_list)
        if self.prompt is not None:
            out.update(prompt_file=self.prompt.source, prompt_hash=self.prompt.hash)
        return out

    def request(self, clip) -> Request:
        c = self.config
        req = Request(clip_id=clip.id, path=clip.path, prompt=self.prompt.render(clip.text) if self.prompt else "",
                      sample_rate=clip.sample_rate)
        if c.provider == "gemini" and c.media == "video":
            req.media = media_file(clip.path, int(c.inline_mb * 1024 * 1024))
            mime = media_type(clip.path)
            if req.media is None and c.upload and mime is not None:  # too big to go inline: upload it
                req.upload = (clip.path, mime)
            if req.media is None and req.upload is None:  # a type Gemini does not take: frames + audio
                clip = self._decode_fallback(clip)
        whole_file = req.media is not None or req.upload is not None
        if not whole_file and clip.frames is not None and (c.provider != "jsonl"):
            frames, times = sample_frames(clip.frames, clip.frame_times, c.frames)
            if c.crop == "face":
                frames = self._face_crops(frames)
            req.frames, req.frame_times = frames, times
        if not whole_file and c.provider == "gemini":
            req.audio = clip.audio
        if c.provider != "jsonl" and not whole_file and req.frames is None and req.audio is None:
            raise ExtractionError("nothing to show the model: " + "; ".join(clip.missing.values()))
        return req

    def _face_crops(self, frames):
        backend = getattr(self, "face_backend", None)
        if backend is not None and backend.opened:
            return face_frames(frames, backend, self.config.margin, self.config.crop_size)[0]
        from .. import faces

        with faces.open_backend("mediapipe") as backend:  # request() before load(): for this call only
            return face_frames(frames, backend, self.config.margin, self.config.crop_size)[0]

    def _decode_fallback(self, clip):
        from .. import media

        if clip.frames is not None or clip.audio is not None:
            return clip
        try:
            decoded = media.decode(clip.path, clip.id, ("audio", "frames"), self.decode)
        except media.DecodeError as exc:
            raise ExtractionError(f"cannot send the file and cannot decode it: {exc}") from None
        decoded.text, decoded.text_source = clip.text, clip.text_source
        return decoded

    def extract(self, clip):
        try:
            return self._extract(clip)
        except ExtractionError as exc:  # let vlm-text of this clip say why it has nothing to embed
            clip.vlm_answers[self.key] = {"error": str(exc)}
            raise

    def _extract(self, clip):
        req = self.request(clip)
        try:
            reply = self.provider.ask(req)
        except VLMCallError as exc:
            raise ExtractionError(f"{self.config.provider}: {exc}") from None
        try:
            answer = parse_answer(reply.text, self.config.class_list)
        except AnswerError as exc:
            raise ExtractionError(f"{self.config.provider} ({reply.model}): {exc}") from None
        record = {
            "label": answer["label"], "scores": answer["scores"], "reasoning": answer["reasoning"],
            "raw": reply.text, "model": reply.model, "provider": self.config.provider,
            "prompt_hash": self.prompt.hash if self.prompt else None,
            "transcript_source": clip.text_source if self.prompt else None,
            "notes": answer["notes"], "meta": reply.meta,
        }
        # later extractors of this clip (vlm-text) read the fresh answer from here
        clip.vlm_answers[self.key] = record
        return Feature(record=record)
