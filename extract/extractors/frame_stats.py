"""`frame-stats`: cheap per-frame visual descriptors (colour, contrast, motion energy) as a series.

No model needed; motion energy tracks arousal roughly and the series exercises the frame path of
the pipeline on any machine.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cache import Feature
from ..registry import ExtractionError, Extractor, register

CHANNELS = ("mean_r", "mean_g", "mean_b", "gray_std", "motion", "edge_density")


@dataclass
class FrameStatsConfig:
    edge_threshold: float = 24.0  # gray-level gradient that counts as an edge

    def validate(self):
        if self.edge_threshold <= 0:
            raise ValueError("edge_threshold must be > 0")


@register
class FrameStatsExtractor(Extractor):
    name = "frame-stats"
    modality = "visual"
    kind = "series"
    needs = ("frames",)
    Config = FrameStatsConfig
    description = "per-frame mean RGB, contrast, motion energy, edge density (series + pooled mean/std)"

    def channels(self):
        return list(CHANNELS)

    def extract(self, clip):
        if clip.frames is None or len(clip.frames) == 0:
            raise ExtractionError(clip.missing.get("frames", "no frames"))
        frames = clip.frames.astype(np.float32)
        gray = frames.mean(axis=3)
        motion = np.zeros(len(frames), np.float32)
        if len(frames) > 1:
            motion[1:] = np.abs(np.diff(gray, axis=0)).mean(axis=(1, 2))
        gy, gx = np.gradient(gray, axis=(1, 2))
        edges = (np.hypot(gx, gy) > self.config.edge_threshold).mean(axis=(1, 2))
        series = np.column_stack([frames.mean(axis=(1, 2)), gray.std(axis=(1, 2)), motion, edges]).astype(np.float32)
        pooled = np.concatenate([series.mean(axis=0), series.std(axis=0)])
        return Feature(data=series, timestamps=clip.frame_times, pooled=pooled)
