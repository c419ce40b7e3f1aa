"""`egemaps`: openSMILE eGeMAPSv02 functionals (88 values per clip), the field's standard
paralinguistic set."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cache import Feature
from ..registry import Extractor, ExtractionError, register

FEATURE_SETS = ("eGeMAPSv02", "GeMAPSv01b", "ComParE_2016")


@dataclass
class EgemapsConfig:
    feature_set: str = "eGeMAPSv02"

    def validate(self):
        if self.feature_set not in FEATURE_SETS:
            raise ValueError(f"feature_set must be one of {', '.join(FEATURE_SETS)}")


@register
class EgemapsExtractor(Extractor):
    name = "egemaps"
    modality = "audio"
    kind = "vector"
    needs = ("audio",)
    Config = EgemapsConfig
    libraries = ("opensmile",)
    description = "openSMILE functionals (eGeMAPSv02 by default; GeMAPSv01b, ComParE_2016)"

    def load(self):
        import opensmile

        self.smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, self.config.feature_set),
                                     feature_level=opensmile.FeatureLevel.Functionals)

    def channels(self):
        self.ensure_loaded()
        return list(self.smile.feature_names)

    def extract(self, clip):
        values = self.smile.process_signal(clip.audio, clip.sample_rate).to_numpy()[0]
        if not np.all(np.isfinite(values)):
            raise ExtractionError("openSMILE returned non-finite values")
        return Feature(data=values.astype(np.float32))
