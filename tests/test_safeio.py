"""Bounded input: user YAML (rules) and JSON lines (annotator files) cannot blow up memory or end in
a traceback; quoted user content is clipped; the annotator format round-trips through its writer."""
import json
import time

import pytest

from ensemble.reranking import RulesError, load_rules
from extract.annotator import AnnotatorError, load_annotator, write_annotator
from extract.safeio import clip, dumps_yaml, json_depth, load_yaml, loads_json, loads_yaml

MER = ["neutral", "angry", "happy", "sad", "worried", "surprise"]


def alias_bomb() -> str:
    """The "billion laughs": 9 levels of 9 aliases to the level before, ~10^9 strings once walked."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# -- YAML ----------------------------------------------------------------------------------------------
def test_yaml_alias_bomb_is_refused_quickly_naming_the_file(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    assert len(bomb.read_bytes()) < 500
    t0 = time.perf_counter()
    with pytest.raises(RulesError) as exc:
        load_rules(bomb, MER)
    assert time.perf_counter() - t0 < 1.0
    msg = str(exc.value)
    assert str(bomb) in msg and "anchor" in msg and "not allowed" in msg and len(msg) < 400


def test_yaml_alias_alone_and_merge_key_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"alias \*x"):
        loads_yaml("rules: *x\n", ValueError, "rules file r.yaml")
    with pytest.raises(ValueError, match=r"r.yaml uses the YAML anchor &base \(line 1\)"):
        loads_yaml("base: &base {a: 1}\nother:\n  <<: *base\n", ValueError, "r.yaml")


def test_yaml_oversized_non_utf8_missing_and_deep_are_one_clear_error(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("rules: []\n" + "# padding\n" * 20_000)
    with pytest.raises(RulesError, match=f"rules file {big} is larger than 100,000 bytes"):
        load_yaml(big, RulesError, "rules file", max_bytes=100_000)
    assert load_yaml(big, RulesError, "rules file") == {"rules": []}  # under the default limit
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("description: caf\xe9\n".encode("latin-1"))
    with pytest.raises(RulesError, match=f"rules file {latin} is not UTF-8 text"):
        load_rules(latin, MER)
    with pytest.raises(ValueError, match="cannot read config file .*nope.yaml"):
        load_yaml(tmp_path / "nope.yaml", what="config file")
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(RulesError, match=f"rules file {deep} is nested too deeply"):
        load_rules(deep, MER)


def test_yaml_syntax_error_message_is_clipped(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text('rules: ["' + "x" * 5000 + '\n: : :\n')
    with pytest.raises(RulesError, match="not valid YAML") as exc:
        load_rules(p, MER)
    assert str(p) in str(exc.value) and len(str(exc.value)) < 800


def test_plain_yaml_still_loads_and_dumps_yaml_reads_back():
    shared = [1, 2]
    data = {"a": shared, "b": shared, "c": {"d": "é"}}
    text = dumps_yaml(data)
    assert "&" not in text and "*" not in text  # yaml.safe_dump would write &id001 / *id001 here
    assert loads_yaml(text) == data


# -- JSON ----------------------------------------------------------------------------------------------
def test_loads_json_depth_and_length_limits():
    deep = "[" * 10_000 + "]" * 10_000
    with pytest.raises(ValueError, match="line is nested 10000 levels deep; the limit is 64"):
        loads_json(deep, ValueError, "line")
    assert json_depth('{"a": "[[[[{{{{", "b": [[1], {"c": "\\"]"}]}') == 3  # brackets in strings do not count
    assert loads_json("[" * 64 + "]" * 64) == json.loads("[" * 64 + "]" * 64)
    with pytest.raises(ValueError, match="65 levels"):
        loads_json("[" * 65 + "]" * 65)
    with pytest.raises(KeyError, match="is 21 characters long; the limit is 20"):
        loads_json('{"name": "abcdefghi"}', KeyError, "x", max_chars=20)
    with pytest.raises(ValueError, match=r"is not valid JSON \(Expecting"):
        loads_json('{"a": ', ValueError, "line")


def test_clip_cuts_long_user_content():
    assert clip("short") == "short"
    cut = clip("x" * 1000)
    assert cut == "x" * 300 + "... (700 more characters)"
    assert clip("y" * 20, 5) == "yyyyy... (15 more characters)"


# -- annotator files -------------------------------------------------------------------------------------
def test_annotator_deep_or_long_line_is_a_problem_and_other_lines_load(tmp_path, monkeypatch):
    from extract import annotator

    monkeypatch.setattr(annotator, "MAX_LINE_CHARS", 50_000)
    f = tmp_path / "ann.jsonl"
    f.write_text("\n".join([
        json.dumps({"name": "a", "label": "happy"}),
        '{"name": "deep", "label": "sad", "x": ' + "[" * 10_000 + "]" * 10_000 + "}",
        json.dumps({"name": "long", "label": "sad", "reasoning": "z" * 60_000}),
        json.dumps({"name": "b", "label": "sad", "confidence": "h" * 2000}),
        json.dumps({"name": "c", "label": "worried"}),
    ]) + "\n")
    ann = load_annotator(f)
    assert sorted(ann.answers) == ["a", "c"]
    assert len(ann.problems) == 3
    assert ann.problems[0].startswith(f"{f}:2: ") and "line is nested 10001 levels deep; the limit is 64" in ann.problems[0]
    assert ann.problems[1] == f"{f}:3: line longer than 50,000 bytes"
    assert ann.problems[2].startswith(f"{f}:4: ") and len(ann.problems[2]) < 500  # the 2000 h's are clipped


def test_annotator_non_utf8_is_one_clear_error(tmp_path):
    j = tmp_path / "ann.jsonl"
    j.write_bytes(json.dumps({"name": "a", "label": "happy"}).encode() + b"\n"
                  + '{"name": "caf\xe9", "label": "sad"}\n'.encode("latin-1"))
    with pytest.raises(AnnotatorError, match=f"annotator file {j} is not UTF-8 text \\(line 2: byte 0xe9"):
        load_annotator(j)
    c = tmp_path / "ann.csv"
    c.write_bytes("name,label\ncaf\xe9,sad\n".encode("latin-1"))
    with pytest.raises(AnnotatorError, match=f"{c} cannot be read as a UTF-8 CSV"):
        load_annotator(c)
    bom = tmp_path / "bom.jsonl"  # a BOM (Windows editors) is not a problem of line 1
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"name": "a", "label": "happy"}).encode() + b"\n")
    assert load_annotator(bom).answers["a"].label == "happy" and not load_annotator(bom).problems


IDS = ["plain", "com,ma", 'quo"te', "new\nline", "-dash", "two words", "naïve ünï", "中文"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_write_annotator_round_trips_through_load_annotator(tmp_path, suffix):
    rows = [{"name": n, "label": MER[i % len(MER)],
             "scores": {c: float(j == i % len(MER)) * 0.7 + 0.05 for j, c in enumerate(MER)}}
            for i, n in enumerate(IDS)]
    rows[0] = {"name": "plain", "label": "happy", "confidence": 0.625}
    rows[1]["reasoning"] = "a smile, \"AU12\"\nand AU6"
    out = tmp_path / f"ann{suffix}"
    assert write_annotator(out, rows) == len(IDS)
    ann = load_annotator(out)
    assert not ann.problems
    assert sorted(ann.answers) == sorted(IDS)
    for row in rows:
        a = ann.answers[row["name"]]
        assert a.label == row["label"]
        want = row.get("confidence") or row["scores"][row["label"]] / sum(row["scores"].values())
        assert a.confidence == pytest.approx(want, abs=1e-12)
        if suffix == ".jsonl" and "scores" in row:
            assert a.scores == row["scores"]
    if suffix == ".jsonl":
        first = json.loads(out.read_text(encoding="utf-8").splitlines()[1])
        assert first["reasoning"] == rows[1]["reasoning"]


def test_write_annotator_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(AnnotatorError, match="unknown format '.txt'"):
        write_annotator(tmp_path / "a.txt", [{"name": "a", "label": "happy"}])
    target = tmp_path / "a.jsonl"
    target.write_text("old\n")
    with pytest.raises(AnnotatorError, match="answer 2 needs a non-empty name and label"):
        write_annotator(target, [{"name": "a", "label": "happy"}, {"name": "", "label": "sad"}])
    assert target.read_text() == "old\n"  # nothing half-written
    assert [p.name for p in tmp_path.iterdir()] == ["a.jsonl"]


def test_vlm_answers_deeply_nested_are_a_failure_not_a_crash(tmp_path):
    from extract.media import Clip
    from extract.registry import ExtractionError, build, load_all
    from extract.vlm import VLMError
    from extract.vlm.answer import AnswerError, parse_answer

    load_all()
    with pytest.raises(AnswerError, match="not a valid JSON object"):
        parse_answer('{"label": "happy", "x": ' + "[" * 10_000 + "]" * 10_000 + "}", MER)
    f = tmp_path / "answers.jsonl"
    f.write_text(json.dumps({"name": "a", "label": "happy"}) + "\n"
                 + '{"name": "b", "label": "sad", "x": ' + "[" * 10_000 + "]" * 10_000 + "}\n")
    ex = build(f"vlm:provider=jsonl,path={f}").ensure_loaded()
    assert ex.extract(Clip(id="a", path="x")).record["label"] == "happy"
    with pytest.raises(ExtractionError, match=r"answers.jsonl:2: unreadable line .*nested 10001 levels deep"):
        ex.extract(Clip(id="b", path="x"))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"name": "caf\xe9", "label": "sad"}\n'.encode("latin-1"))
    with pytest.raises(VLMError, match=f"answers file {latin} is not UTF-8 text"):
        build(f"vlm:provider=jsonl,path={latin}").ensure_loaded()
