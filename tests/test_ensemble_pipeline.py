"""EnsemblePipeline: what fit leaves behind equals what run gives on the same rows."""
import numpy as np

from extract.annotator import Annotator, Answer
from ensemble.members import load_members
from ensemble.pipeline import EnsemblePipeline
from ensemble.reranking import parse_rules
from ensemble.synth import synthetic_runs

RULES = [{"rule": "class_priority", "when_top": ["worried"], "prefer": ["sad"], "margin": 0.3},
         {"rule": "prior_correction", "target": "labeled"},
         {"rule": "annotator_override", "margin": "auto", "confidence": "auto"}]


def test_fit_result_is_what_run_gives_on_the_tuning_rows(tmp_path):
    paths, labels, _ = synthetic_runs(tmp_path, n_runs=1, n_labeled=120, n_test=20, skills=(0.1, 0.2, 0.3), seed=5)
    ms = load_members(paths)
    rng = np.random.default_rng(0)
    ann = Annotator("mem", {n: Answer(lab if rng.random() < 0.7 else "sad", float(rng.uniform(0.5, 1)))
                            for n, lab in labels.items()})
    pipe = EnsemblePipeline(ms.classes, "reliance", "auto", parse_rules(RULES, ms.classes), ann).fit(ms.tuning, ms.y)
    fitted, again = pipe.fit_result_, pipe.run(ms.tuning)
    assert fitted.ids == again.ids and len(fitted.stages) == len(again.stages) == 4
    for a, b in zip(fitted.stages, again.stages):
        assert a.name == b.name and a.info == b.info
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.changed, b.changed)
    assert any(s.changed.any() for s in fitted.stages[1:])  # the rules did something to compare
    assert fitted.changed_by() == again.changed_by()
