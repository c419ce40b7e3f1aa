"""`vlm-text`: the reasoning text of cached VLM answers (`vlm`) through a text encoder (the `hf-text`
machinery: any transformers text encoder or sentence-transformers folder, every layer pooled), so
that the VLM's knowledge becomes an ordinary expert input -> (layers, dim).

Where the answer comes from, in this order: the answer the `vlm` extractor gave for this clip
earlier in the same run (list ``vlm`` before ``vlm-text`` in ``--features``), else the `vlm` feature
set in the cache (``vlm=`` names it: ``vlm`` when there is one, else its full key from
``cli.py cache info``). A clip without an answer (not asked yet, or its answer failed) is a
recorded failure; after adding answers, re-run with the runner's retry of failed clips.

SPEC example::

    vlm:provider=jsonl,path=answers.jsonl,vlm-text:model=minilm
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..cache import CacheError, Feature, FeatureCache, FeatureSet
from ..registry import ExtractionError, register
from .hf_text import HFTextConfig, HFTextExtractor

FIELDS = ("reasoning", "raw")


@dataclass
class VlmTextConfig(HFTextConfig):
    vlm: str = "vlm"  # the VLM feature set: extractor name (when only one) or full key
    field: str = "reasoning"  # reasoning | raw (the whole response)
    cache: str | None = None  # cache holding the answers (default: the run's cache, else ./cache)

    def validate(self):
        super().validate()
        if self.field not in FIELDS:
            raise ValueError(f"field must be one of {', '.join(FIELDS)}")
        if not self.vlm.strip():
            raise ValueError("vlm must name the VLM feature set (vlm, or a vlm-... key)")


@register
class VlmTextExtractor(HFTextExtractor):
    name = "vlm-text"
    modality = "knowledge"
    needs = ()  # nothing decoded: the text comes from the VLM's answer
    after = ("vlm",)  # runs after these extractors of the same clip (their fresh answers are used)
    handles_missing = True
    Config = VlmTextConfig
    description = ("a VLM's cached reasoning text (vlm) through a text encoder (hf-text machinery): every layer "
                   "pooled -> (layers, dim)")

    def key_payload(self):
        payload = super().key_payload()
        payload["config"] = {k: v for k, v in asdict(self.config).items() if k != "cache"}
        return payload

    def cache_dir(self) -> str:
        return self.config.cache or self.cache_root or "cache"

    def _fresh(self, clip) -> tuple[str, dict] | None:
        answers = clip.vlm_answers
        want = self.config.vlm
        hits = [(k, r) for k, r in answers.items() if k == want or (want == "vlm" and k.startswith("vlm-"))]
        return hits[0] if len(hits) == 1 else None

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_answers", None)  # a worker looks the answers up itself
        return state

    def _answers_set(self) -> tuple[str, FeatureSet]:
        """The VLM feature set, resolved once per instance on first use (and per cache folder).

        Every feature set of a run exists (meta.json written) before its first clip, so the key
        resolves the same for the whole run; answers the `vlm` extractor gives during the run reach
        this clip through ``clip.info`` (:meth:`_fresh`), so the index loaded here once never needs
        them. A failed lookup is not kept: the next clip tries again."""
        root = self.cache_dir()
        found = getattr(self, "_answers", None)
        if found is None or found[0] != root:
            cache = FeatureCache(root)
            try:
                key = cache.resolve(self.config.vlm)
            except CacheError as exc:
                raise ExtractionError(f"no VLM answers to embed: {exc}") from None
            found = self._answers = (root, key, cache.feature_set(key))
        return found[1], found[2]

    def _cached(self, clip) -> tuple[str, dict | None]:
        key, fs = self._answers_set()
        batch = fs.read([clip.id])
        if not batch.present[0]:
            why = batch.failures.get(clip.id)
            raise ExtractionError(f"no VLM answer for this clip in {key}" + (f" (it failed: {why[:300]})" if why
                                  else " (run the vlm extractor on it first)"))
        return key, batch.data[0]

    def extract(self, clip):
        found = self._fresh(clip)
        key, record = found if found is not None else self._cached(clip)
        if record and "error" in record and "label" not in record:
            raise ExtractionError(f"no VLM answer for this clip in {key} (it failed: {record['error'][:300]})")
        text = (record or {}).get(self.config.field)
        if text is None or not str(text).strip():
            if self.config.on_missing == "fail":
                raise ExtractionError(f"the VLM answer in {key} has no {self.config.field} text")
            text = ""
        return Feature(data=self.encode_texts([str(text)])[0], source=f"vlm:{key}")
