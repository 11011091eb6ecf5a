"""A toy evaluation suite defined in this file, with no change to the library: registered, it is run
by ``run_suite`` with its own options, by ``lucidlm evaluate --suite``, and written to the run's
evaluation files."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
from typer.testing import CliRunner

from lucidlm.cli import app as cli
from lucidlm.errors import LucidError
from lucidlm.evaluation import run_suite
from lucidlm.evaluation.suite import SUITES, Suite
from lucidlm.models import load_pretrained


@dataclass
class LengthOptions:
    min_words: int = 0  # rows shorter than this are left out


class ConfidenceByLength(Suite):
    """Is the model surer of longer texts? The correlation of the label's top probability with the
    number of words."""

    Options = LengthOptions

    def run(self, context, options):
        rows = [i for i, t in enumerate(context.rows.texts) if len(t.split()) >= options.min_words]
        texts = [context.rows.texts[i] for i in rows]
        probabilities = np.exp(context.outputs.get(texts, None)["label_logits"])
        confidence = (probabilities / probabilities.sum(-1, keepdims=True)).max(-1)
        words = np.array([len(t.split()) for t in texts])
        return {"rows": len(rows), "correlation": float(np.corrcoef(words, confidence)[0, 1])}

    def tables(self, name, results):
        return [f"## {name}", "", *(f"- {m}: r = {r[name]['correlation']:.3f}" for m, r in results.items()), ""]


@pytest.fixture(autouse=True, scope="module")
def _toy_registered():
    """The toy suite is registered while this file's tests run, and only then."""
    with SUITES.registered("toy-length", ConfidenceByLength()):
        yield


def test_a_registered_suite_runs_with_its_own_options(tiny_runs, cebab_small):
    model = load_pretrained(tiny_runs["joint"])
    every = run_suite(model, cebab_small, "toy-length")["toy-length"]
    longer = run_suite(model, cebab_small, "toy-length", options={"toy-length": {"min_words": 20}})["toy-length"]
    lengths = [len(t.split()) for t in cebab_small.test.texts]
    assert every["rows"] == len(lengths) and longer["rows"] == sum(n >= 20 for n in lengths) < len(lengths)
    assert -1.0 <= every["correlation"] <= 1.0
    with pytest.raises(LucidError, match=r"unknown setting\(s\) \['toy-length.max_words'\]"):
        run_suite(model, cebab_small, "toy-length", options={"toy-length": {"max_words": 3}})
    with pytest.raises(LucidError, match=r"unknown setting\(s\) \['sample'\]"):
        run_suite(model, cebab_small, "toy-length", sample=3)


def test_the_cli_runs_a_registered_suite_and_writes_it(tiny_runs, tmp_path):
    run = shutil.copytree(tiny_runs["joint"], tmp_path / "joint")
    answer = CliRunner().invoke(cli, ["evaluate", str(run), "--suite", "toy-length,interventions", "--json"])
    assert answer.exit_code == 0, answer.output
    written = json.loads((run / "evaluation.json").read_text())["results"]
    (results,) = written.values()
    assert results["suites"] == ["toy-length", "interventions"] and results["toy-length"]["rows"] == results["n"]
    assert f"r = {results['toy-length']['correlation']:.3f}" in (run / "evaluation.md").read_text()
    unknown = CliRunner().invoke(cli, ["evaluate", str(run), "--suite", "toy-width"])
    assert unknown.exit_code == 1 and "toy-length" in unknown.output  # the valid names, the toy's among them
