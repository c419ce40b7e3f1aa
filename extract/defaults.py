"""The offline default extractor set: what `cli.py extract` computes when no --features is given.

Every member works on a fresh machine with no model hub: signal processing (librosa, openSMILE).
"""
DEFAULT_FEATURES = "librosa,egemaps"
