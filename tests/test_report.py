"""``lucidlm report``: one self-contained HTML file (nothing it refers to lies outside it, and
Chromium opening it makes no request) holding the run's metrics, confusion matrices, per-concept
metrics, SparseCBM's subnetworks, proto-lm's prototypes and the evaluation suite's results."""

from __future__ import annotations

import base64
import json
import re
import shutil
from html import escape
from html.parser import HTMLParser

import numpy as np
import pytest
from conftest import CHROMIUM, needs_chromium
from typer.testing import CliRunner

from lucidlm.cli import app as cli
from lucidlm.data import MISSING
from lucidlm.models import load_pretrained
from lucidlm.web.report import STYLE, build_report, worked_example

# Characters a tokenizer normalises (é), does not know (the emoji: [UNK]) or cuts into pieces.
WRITTEN = "The café was great 😀 and the limoncello superb; مطعم رائع"
PHONE = {"width": 390, "height": 844}
# A 1×1 PNG, standing in for the evaluation suite's intervention_curves.png.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


class References(HTMLParser):
    """Every URL the document refers to: attributes that load or link, and CSS ``url(...)``."""

    URL_ATTRIBUTES = {"src", "href", "srcset", "action", "formaction", "poster", "data", "background", "xlink:href"}

    def __init__(self):
        super().__init__()
        self.urls, self.tags, self.in_style = [], [], False

    def handle_starttag(self, tag, attributes):
        self.tags.append(tag)
        self.in_style = tag == "style"
        for name, value in attributes:
            if name in self.URL_ATTRIBUTES and value is not None:
                self.urls.append(value)
            if name == "style" and value:
                self.urls += re.findall(r"url\(([^)]*)\)", value)

    def handle_data(self, data):
        if self.in_style:
            self.urls += re.findall(r"url\(([^)]*)\)", data)


def references(html: str) -> References:
    parser = References()
    parser.feed(html)
    return parser


@pytest.fixture(scope="module")
def runs(tiny_runs):
    return tiny_runs


@pytest.fixture(scope="module")
def joint_report(runs, tmp_path_factory):
    """The CLI's report of the joint run with evaluation suite files beside it."""
    run = tmp_path_factory.mktemp("evaluated") / "joint"
    shutil.copytree(runs["joint"], run)
    results = {
        "command": "lucidlm evaluate joint --suite faithfulness",
        "results": {
            "joint": {
                "faithfulness": {
                    "tokens": {
                        "label": {
                            "integrated_gradients": {"comprehensiveness": {"aopc": 0.4321, "per_step": [0.1, 0.2]}},
                            "random": {"comprehensiveness": {"aopc": 0.0123, "per_step": [0.0, 0.01]}},
                        }
                    }
                },
                "interventions": {
                    "curve": [{"concepts_set": 0, "accuracy": 0.25}, {"concepts_set": 4, "accuracy": 0.875}]
                },
            }
        },
    }
    (run / "evaluation.json").write_text(json.dumps(results))
    (run / "evaluation.md").write_text("# Are the explanations true?\n<b>AOPC</b> 0.4321\n")
    (run / "intervention_curves.png").write_bytes(PNG)
    output = run.parent / "report.html"
    result = CliRunner().invoke(cli, ["report", str(run), "-o", str(output), "--limit", "20", "--examples", "2"])
    assert result.exit_code == 0, result.output
    return output.read_text(encoding="utf-8"), run


def test_report_is_one_file_that_refers_to_nothing_outside_it(joint_report):
    html, _ = joint_report
    found = references(html)
    assert "script" not in found.tags and "link" not in found.tags and "iframe" not in found.tags
    outside = [u for u in found.urls if not u.startswith(("#", "data:"))]
    assert outside == [], outside
    assert any(u.startswith("data:image/png;base64,") for u in found.urls)  # the curves, embedded
    assert "<style>" in html and "http://" not in html and "https://" not in html


def test_report_holds_metrics_confusion_matrices_and_the_evaluation_suite(joint_report, runs):
    html, run = joint_report
    record = json.loads((run / "run.json").read_text())
    test = record["metrics"]["test"]
    assert (
        f"{test['task']['accuracy']:.3f}" in html
        and f"{test['concepts']['per_concept']['noise']['macro_f1']:.3f}" in html
    )
    assert "Computed now on 20 of the 32 test rows (a fixed random sample, --limit 20)" in html
    # The label's confusion matrix counts every one of the 20 rows once; one matrix per concept besides.
    label = re.search(r'<table class="confusion"><caption>Label.*?</table>', html).group(0)
    row_totals = re.findall(r"<td>(\d+)</td></tr>", label)
    assert len(row_totals) == 5 and sum(map(int, row_totals)) == 20
    assert html.count('<table class="confusion">') == 1 + 4
    assert "0.432" in html and "0.012" in html  # evaluation.json's AOPCs, as tables
    assert "&lt;b&gt;AOPC&lt;/b&gt;" in html  # evaluation.md, escaped
    assert base64.b64encode(PNG).decode() in html
    assert html.count('<article class="example">') == 2 and "Before" in html


def test_report_without_evaluation_says_so_with_the_command(runs, tmp_path):
    html = build_report(runs["joint"], limit=8, examples=0)
    assert "This run has no evaluation suite results" in html
    assert f"<code>lucidlm evaluate {runs['joint']} --suite faithfulness,causal,interventions,honesty</code>" in html
    assert '<article class="example">' not in html


def test_report_draws_the_training_curves_and_the_reliability_diagram(runs):
    """Without the evaluation suite the report still has figures: the training curves (one point an
    epoch) and, per recorded split, the reliability diagram (one bar a non-empty bin)."""
    model = load_pretrained(runs["joint"])
    record = json.loads((runs["joint"] / "run.json").read_text())
    html = build_report(runs["joint"], limit=8, examples=0)
    curves = re.search(
        r'<svg class="figure"[^>]*aria-label="training loss and dev score per epoch".*?</svg>', html
    ).group(0)
    epochs = [h for h in model.training_history if "epoch" in h]
    assert curves.count("<circle") == 2 * len(epochs) and curves.count("<polyline") == 2
    for split in ("dev", "test"):
        diagram = re.search(rf'<svg class="figure"[^>]*aria-label="reliability on {split}".*?</svg>', html).group(0)
        bins = record["metrics"][split]["calibration"]["bins"]
        assert diagram.count("<rect") == len(bins) and sum(b["n"] for b in bins) == record["metrics"][split]["n"]
        assert f"ECE {record['metrics'][split]['task']['ece']:.3f}" in html
    t = model.temperatures
    assert f"Label temperature <strong>{t.label:.3f}</strong>, fitted on dev" in html


def test_report_examples_are_the_showcase_rows_with_their_first_asked_correction(runs):
    from lucidlm.experiment import load_experiment_task
    from lucidlm.intervene import showcase_corrections

    model = load_pretrained(runs["joint"])
    record = json.loads((runs["joint"] / "run.json").read_text())
    rows = load_experiment_task(record["experiment"]["data"]).split("test")
    html = build_report(runs["joint"], examples=2)
    for number, showcase in enumerate(showcase_corrections(model, rows, 2), start=1):
        article = re.search(rf'<article class="example"><h3>Example {number}</h3><blockquote>(.*?)</blockquote>', html)
        assert article.group(1) == escape(rows.texts[showcase.row])
        if showcase.concept is not None:
            assert f"Correcting the concept the model would ask about first, {showcase.concept}" in html


def test_sparse_report_has_density_per_layer_and_the_overlap_heat_map(runs):
    model = load_pretrained(runs["sparse"])
    html = build_report(runs["sparse"], limit=8, examples=0)
    assert "Mask density per layer" in html
    for layer in model.subnetworks:
        assert f'<th scope="row">{layer}</th>' in html
    heatmap = re.search(r'<svg class="heatmap".*?</svg>', html).group(0)
    assert heatmap.count("<rect") == 4 * 4
    cells = re.findall(r"<title>(\w+) × (\w+): ([0-9.]+)</title>", heatmap)
    jaccard = model.subnetwork_statistics()["jaccard"]
    names = model.spec.concept_names
    assert [(a, b) for a, b, _ in cells] == [(a, b) for a in names for b in names]
    assert [float(v) for _, _, v in cells] == pytest.approx([x for row in jaccard for x in row], abs=1e-3)
    assert min(float(v) for _, _, v in cells) < 1.0  # movement scores give each concept its own mask


def test_proto_report_shows_every_prototype_with_its_examples(runs):
    model = load_pretrained(runs["proto"])
    html = build_report(runs["proto"], limit=8, examples=1)
    assert html.count('<div class="card"><h4>Prototype') >= model.num_prototypes
    for examples in model.projection.examples:
        assert all(f"<q>{escape(e.text)}</q>" in html for e in examples)
    assert "Concept subnetworks" not in html


@needs_chromium
def test_chromium_opens_the_report_with_no_request(joint_report):
    from playwright.sync_api import sync_playwright

    html, run = joint_report
    path = run.parent / "report.html"
    requests = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.route(
            "**/*",
            lambda route: (
                requests.append(route.request.url),
                route.continue_() if route.request.url == path.as_uri() else route.abort(),
            ),
        )
        page.goto(path.as_uri())
        page.wait_for_load_state("networkidle")
        assert page.title() == f"lucidlm report: {run.name}"
        assert page.locator("table.confusion").count() == 5
        assert page.evaluate("[...document.images].every(img => img.complete && img.naturalWidth > 0)")
        browser.close()
    assert requests == [path.as_uri()]


def test_report_tokens_are_the_writers_words_with_their_sign_and_say_what_scores_mean(runs):
    """A worked example draws the text as written (café, the emoji, Arabic words), one box a word
    (limoncello, not limo nce llo) with its tokens' summed score and its sign as a class and a line,
    under a legend; its concepts table says what a contribution is."""
    model = load_pretrained(runs["joint"])
    html = worked_example(model, 1, WRITTEN, 0, np.full(len(model.spec.concepts), MISSING))
    words = {word for _, word in re.findall(r'<span class="tok (pos|neg)"[^>]*>([^<]*)</span>', html)}
    assert {"café", "😀", "limoncello", "مطعم", "رائع"} <= words and not {"cafe", "limo", "[UNK]"} & words
    explanation = model.explain(WRITTEN)
    paragraphs = re.findall(r'<p class="tokens">(.*?)</p>', html)
    assert len(paragraphs) == len(explanation.tokens) == 5
    for paragraph, attribution in zip(paragraphs, explanation.tokens):
        boxes = re.findall(r'<span class="tok (pos|neg)"[^>]*>([^<]*)</span>', paragraph)
        assert [word for _, word in boxes] == [escape(g.text) for g in attribution.groups]
        assert [sign for sign, _ in boxes] == ["pos" if g.score >= 0 else "neg" for g in attribution.groups]
        assert re.sub(r"<[^>]+>", "", paragraph) == escape(WRITTEN)
    assert "+ raises" in html and "− lowers" in html and "its score the sum of its tokens' scores" in html
    from lucidlm.explain.explanation import CONTRIBUTION_MEANING

    assert escape(CONTRIBUTION_MEANING) in html and CONTRIBUTION_MEANING.startswith("Contribution: label-head weight")
    assert '<th scope="col">from value</th><th scope="col">from text</th>' in html
    assert f"The concept values account for <strong>{explanation.concept_values_share:.0%}</strong>" in html
    for c in explanation.concepts:
        assert f"<td>{c.from_value:+.3f}</td><td>{c.from_text:+.3f}</td>" in html
    assert ".tok.neg{border-bottom:2px dashed" in STYLE


@needs_chromium
@pytest.mark.parametrize("kind", ["joint", "sparse", "proto"])
def test_report_fits_a_phone(joint_report, runs, tmp_path, kind):
    """At 390 px the report (tables, heat map, worked examples side by side on a wide screen)
    scrolls only down."""
    from playwright.sync_api import sync_playwright

    if kind == "joint":
        html = joint_report[0]
    else:
        html = build_report(runs[kind], limit=8, examples=1)
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport=PHONE)
        page.goto(path.as_uri())
        beyond = page.evaluate(
            """width => [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > width + 0.5)
            .map(e => e.tagName.toLowerCase() + '.' + e.getAttribute('class') + ': ' + Math.round(e.getBoundingClientRect().right))
            .slice(0, 12)""",
            PHONE["width"],
        )
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], beyond
        assert page.locator(".example").count() >= 1
        browser.close()
