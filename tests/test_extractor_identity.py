"""An extractor's key is computed once."""
from extract.registry import build, load_all

load_all()


def test_key_is_computed_once_per_instance(monkeypatch):
    ex = build("librosa")
    calls = []
    real = type(ex).key_payload

    def counting(self):
        calls.append(1)
        return real(self)

    monkeypatch.setattr(type(ex), "key_payload", counting)
    keys = {ex.key for _ in range(5)}
    assert len(keys) == 1 and len(calls) == 1
    assert ex.provenance()["config_hash"] == ex.key.rsplit("-", 1)[1]
