"""A bundle's local models in another place than where the bundle was made (another machine, a
moved folder): ``recognise --relocate OLD=NEW``, ``Recogniser.load(path, relocate={OLD: NEW})``.

A feature's key hashes its whole configuration, the model's path as the user gave it included, with
the checksum of a local model's files; so a bundle whose HuBERT was ``/data/alice/hubert`` cannot
rebuild the key where the folder is ``/scratch/hubert``, although the weights are the same. With a
relocation the extractor is rebuilt on NEW and accepted only when its own key payload, with NEW put
back to OLD, hashes to the recorded key: the same extractor, version, options, decode and weights
checksum, nothing but the path moved. It then files its sets under the recorded key (the models read
them there) and its provenance records where the model was loaded from.

Without a relocation, a key that does not come out is explained: the model is not there, or its
files changed since the bundle was made.
"""
from __future__ import annotations

import os
from pathlib import Path

from .bundle import BundleError


def _norm(value: str) -> str:
    return os.path.normpath(os.path.expanduser(value))


def parse_relocations(items) -> dict[str, str]:
    """``OLD=NEW`` strings (the CLI's ``--relocate``) as {OLD: NEW}."""
    out: dict[str, str] = {}
    for item in items or ():
        old, sep, new = str(item).partition("=")
        if not sep or not old or not new:
            raise BundleError(f"--relocate {item}: give OLD=NEW (OLD: the model path the bundle names, "
                              "NEW: where it is now)")
        out[old] = new
    return out


def relocated_config(config: dict, relocate: dict) -> tuple[dict, dict]:
    """``config`` with every option naming a moved model set to its new place; {option: old value}."""
    moves = {_norm(old): new for old, new in (relocate or {}).items()}
    new_config, moved = dict(config), {}
    for option, value in config.items():
        if isinstance(value, str) and value and _norm(value) in moves:
            new_config[option] = moves[_norm(value)]
            moved[option] = value
    return new_config, moved


def key_before_the_move(ex, moved: dict) -> str:
    """The key ``ex`` would have with its moved options back at their old values (its own key when
    nothing moved)."""
    from extract.cache import config_hash

    if not moved:
        return ex.key
    payload = ex.key_payload()
    for option, old in moved.items():
        if payload["config"].get(option) is not None:
            payload["config"][option] = old
    return f"{ex.name}-{config_hash(payload)}"


def why_the_key_differs(feature: dict, ex) -> str | None:
    """Why a local model's feature cannot be rebuilt here (the model is missing or changed); None
    when that is not the reason."""
    recorded = feature.get("model") or {}
    if recorded.get("source") != "local" or not recorded.get("path"):
        return None
    path = recorded["path"]
    named = next((v for v in (feature.get("config") or {}).values()
                  if isinstance(v, str) and v and _norm(v) in (_norm(path), path)), path)
    if not Path(path).exists():
        return (f"its model {path} is not here (the bundle was made with it, {recorded.get('checksum')}): put it "
                f"back there, or say where it is now: recognise --relocate {named}=NEW "
                f"(Recogniser.load(..., relocate={{{named!r}: NEW}}))")
    now = (ex.model_provenance() or {}).get("checksum")
    if now is not None and now != recorded.get("checksum"):
        return (f"its model {path} has changed since the bundle was made (checksum now {now}, bundle "
                f"{recorded.get('checksum')}): the features would differ from the ones the models were trained on")
    return None


def not_the_same_model(feature: dict, ex, moved: dict) -> str:
    """Why a feature rebuilt on moved models is refused: the model there is another one."""
    recorded = (feature.get("model") or {}).get("checksum")
    now = (ex.model_provenance() or {}).get("checksum")
    where = ", ".join(f"{old}={getattr(ex.config, opt)}" for opt, old in moved.items())
    return (f"--relocate {where}: the model there is not the one the bundle was made with (checksum {now}, "
            f"bundle {recorded}): the features would differ from the ones the models were trained on")
