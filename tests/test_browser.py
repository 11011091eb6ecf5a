"""The page of ``lucidlm serve`` in a real browser: Debian's Chromium driven by Playwright (never a
downloaded browser). A user types a review, sees the label, flips a concept, and sees the label
and the page change; on a SparseCBM run, rewires a subnetwork; on proto-lm, sees prototypes."""

from __future__ import annotations

import time

import pytest
from conftest import CHROMIUM, needs_chromium
from fastapi.testclient import TestClient

from lucidlm import SubnetworkRewiring
from lucidlm.models import ConceptBottleneckLM, SparseConceptLM, load_pretrained
from lucidlm.web.app import create_app
from lucidlm.web.serve import serving

pytestmark = needs_chromium
REVIEWS = [
    "Great pasta, but we waited an hour.",
    "The food was cold and the waiter was rude, but the room was quiet.",
    "Lovely ambiance and friendly staff; the noise level was fine and the steak superb.",
]
# Characters a tokenizer normalises (é), does not know (the emoji: [UNK]) or cuts into pieces.
WRITTEN = "The café was great 😀 and the limoncello superb; مطعم رائع"
PHONE = {"width": 390, "height": 844}
# Elements that reach past the right edge of a phone's screen, to name in a failure.
BEYOND_THE_SCREEN = """width => [...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > width + 0.5 && getComputedStyle(e).position !== 'absolute')
  .map(e => `${e.tagName.toLowerCase()}${e.id ? '#' + e.id : ''}${e.className ? '.' + e.className : ''}: `
    + Math.round(e.getBoundingClientRect().right)).slice(0, 12)"""


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def runs(tiny_runs):
    return tiny_runs


def open_page(browser, url, **options):
    """A page at ``url`` that records console errors (a blocked script or style shows there) and
    any request that leaves the server."""
    page = browser.new_page(locale="en-US", **options)
    page.errors, page.foreign = [], []
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("request", lambda request: request.url.startswith(url) or page.foreign.append(request.url))
    page.goto(url)
    page.wait_for_selector("#run-info:not(:has-text('Loading'))")
    return page


def predict(page, text: str) -> None:
    page.fill("#text", text)
    page.click("#predict")
    page.wait_for_selector("#tokens-section:not([hidden])", timeout=30_000)  # the explanation arrived


def a_flip_that_changes_the_label(client):
    """(review, concept, value, before, after) where setting the concept changes this tiny model's label,
    found through the API as a user would by trying."""
    info = client.get("/api/info").json()
    for text in REVIEWS:
        predicted = client.post("/api/predict", json={"text": text}).json()
        for concept in info["concepts"]:
            for value in concept["values"]:
                if value == predicted["concepts"][concept["name"]]["value"]:
                    continue
                result = client.post("/api/intervene", json={"text": text, "values": {concept["name"]: value}}).json()
                if result["label_changed"]:
                    return text, concept["name"], value, result["before"]["label"], result["after"]["label"]
    pytest.fail("no single concept flip changes the tiny model's label on any review; add reviews to REVIEWS")


def test_type_a_review_flip_a_concept_and_see_the_label_change(browser, runs):
    app = create_app(load_pretrained(runs["joint"]), runs["joint"])
    text, concept, value, before, after = a_flip_that_changes_the_label(TestClient(app))
    with serving(app) as url:
        page = open_page(browser, url)
        assert "bottleneck (joint, soft_targets)" in page.inner_text("#run-info")
        predict(page, text)
        assert page.inner_text("#prediction .label-value") == before
        assert page.locator("#concepts tbody tr").count() == 4
        assert page.locator("#concepts input[data-confirm]").count() == 0  # scalar logits: nothing to confirm
        answer = TestClient(app).post("/api/predict", json={"text": text}).json()
        suggestion, share = answer["suggestion"], answer["concept_values_share"]
        if suggestion["change_probability"] > 0:  # a question the person can click: it takes them to the concept
            assert page.inner_text("#ask-next").startswith(
                f"Check first: {suggestion['concept']}? A correction there changes the decision with probability"
            )
            page.click("#ask-next button")
            assert page.evaluate("document.activeElement.dataset.concept") == suggestion["concept"]
        else:
            assert "No single correction would change the decision" in page.inner_text("#ask-next")
        assert page.inner_text("#values-share").startswith(
            f"The concept values account for {100 * share:.1f}% of this decision"
        )
        assert page.locator("#concepts .contribution-split").count() == 4
        assert page.is_hidden("#compare-section")

        page.select_option(f"select[data-concept='{concept}']", value)
        page.wait_for_selector("#compare-section:not([hidden])")
        assert page.inner_text("#before .label-value") == before
        assert page.inner_text("#after .label-value") == after != before
        assert f"changes from {before} to {after}" in page.inner_text("#compare-summary")
        assert page.get_attribute(f"#concepts tr[data-concept='{concept}']", "class") == "changed"
        assert page.locator("#tokens .tok").count() > 3  # tokens highlighted for the chosen target

        page.click("#reset")  # back to the model's own reading: the comparison goes away
        assert page.is_hidden("#compare-section") and page.input_value(f"select[data-concept='{concept}']") != value
        assert page.errors == [] and page.foreign == []
        page.close()


def test_sign_in_take_a_text_from_the_queue_correct_it_and_see_it_recorded(browser, runs, tmp_path):
    import shutil

    from lucidlm.corrections import CorrectionStore, add_user
    from lucidlm.web.serve import load_app

    run = shutil.copytree(runs["joint"], tmp_path / "joint")
    store = CorrectionStore(run)
    tokens = {"alice": add_user(store, "alice", "corrector"), "vera": add_user(store, "vera", "viewer")}
    (tmp_path / "pool.csv").write_text("text\n" + "\n".join(f'"{r}"' for r in REVIEWS) + "\n")
    with serving(load_app(run, pool=tmp_path / "pool.csv", store=store)) as url:
        page = open_page(browser, url)
        assert "0 corrections of this run waiting to be learned" in page.inner_text("#waiting")
        assert page.is_disabled("#queue-next")  # no token: the page reads only
        page.fill("#token", tokens["vera"])
        page.click("#login")
        page.wait_for_selector("#signed-in:not([hidden])")
        assert page.inner_text("#who") == "Signed in as vera (viewer)." and page.is_disabled("#queue-next")
        page.click("#logout")
        page.fill("#token", "not-a-token")
        page.click("#login")
        page.wait_for_selector("#error:not([hidden])")
        assert "not one of this server's users" in page.inner_text("#error") and page.is_visible("#login-form")

        page.fill("#token", tokens["alice"])
        page.click("#login")
        page.wait_for_selector("#signed-in:not([hidden])")
        assert page.input_value("#token") == "" and tokens["alice"] not in page.content()
        page.click("#queue-next")
        page.wait_for_selector("#tokens-section:not([hidden])", timeout=30_000)
        queued = page.input_value("#text")
        assert queued in REVIEWS and page.inner_text("#queue-ask").startswith("The queue asks first: is ")
        ask = page.inner_text("#queue-ask").split("is ", 1)[1].split(" what")[0]
        read = page.input_value(f"select[data-concept='{ask}']")
        other = next(v for v in ("Negative", "Positive", "unknown") if v != read)
        page.select_option(f"select[data-concept='{ask}']", other)
        page.wait_for_selector("#compare-section:not([hidden])")
        page.select_option("#record-label", "2")
        page.click("#record")
        page.wait_for_selector("#record-status:has-text('Recorded')")
        assert page.inner_text("#record-status").startswith(
            f"Recorded as correction 1 by alice: {ask} = {other}, label "
        )
        assert page.inner_text("#record-status").endswith("; you say 2.")
        page.wait_for_selector("#waiting:has-text('1 correction of this run')")
        (record,) = store.records()
        assert (record.author, record.text, record.set_values, record.gold_label) == (
            "alice",
            queued,
            {ask: other},
            "2",
        )
        page.click("#queue-next")  # the reviewed text is not handed out again
        deadline = time.monotonic() + 30
        while page.input_value("#text") == queued and time.monotonic() < deadline:
            time.sleep(0.05)
        assert page.input_value("#text") in REVIEWS and "2 not yet reviewed" in page.inner_text("#queue-state")
        assert page.errors == [e for e in page.errors if "401" in e] and page.foreign == []
        page.close()


def test_a_text_longer_than_the_model_reads_says_how_much_it_read(browser, runs):
    """The model reads a text's first ``max_length`` tokens (128 here): the page says so beside the
    label, strikes the unread rest through in the token view, and says nothing for a short text or
    for an answer without the fields (a text read whole)."""
    app = create_app(load_pretrained(runs["joint"]), runs["joint"])
    long = "The food was cold and the waiter was rude. " * 30  # within 2,000 characters, past 128 tokens
    answer = TestClient(app).post("/api/predict", json={"text": long}).json()
    assert answer["truncated"] and answer["tokens_read"] == 128
    with serving(app) as url:
        page = open_page(browser, url)
        predict(page, long)
        assert page.inner_text("#reading-note").startswith(
            f"The model read the first 128 of {answer['tokens_total']} tokens of this text"
        )
        assert page.locator("#tokens .unread").count() == 1 and page.inner_text("#tokens").strip() == long.strip()
        predict(page, REVIEWS[0])
        assert page.locator("#reading-note").count() == 0

        def without_the_fields(route):
            response = route.fetch()
            body = {k: v for k, v in response.json().items() if k not in ("tokens_read", "tokens_total", "truncated")}
            route.fulfill(response=response, json=body)

        page.route("**/api/predict", without_the_fields)
        predict(page, long)
        assert page.is_visible("#prediction .label-value") and page.locator("#reading-note").count() == 0
        assert page.errors == [] and page.foreign == []
        page.close()


def test_a_text_over_the_character_limit_stays_whole_and_the_page_says_what_it_sends(browser, runs):
    """A pasted text over 2,000 characters is not cut silently: the box keeps it, a note says only
    the first 2,000 go to the model, and the prediction says it was made on them (characters as the
    server counts them: an emoji is one, and never half of one is sent)."""
    app = create_app(load_pretrained(runs["joint"]), runs["joint"])
    text = ("Great pasta 😀 but we waited an hour. " * 80)[:2500]
    assert len(text) == 2500
    with serving(app) as url:
        page = open_page(browser, url)
        page.fill("#text", text)
        assert page.input_value("#text") == text
        note = page.inner_text("#text-limit")
        assert page.is_visible("#text-limit") and "only the first 2,000" in note and "the last 500 are left out" in note
        predict(page, text)
        assert page.is_hidden("#error")
        assert "The page sent the first 2,000 of your 2,500 characters." in page.inner_text("#reading-note")
        page.fill("#text", REVIEWS[0])
        assert page.is_hidden("#text-limit")
        assert page.errors == [] and page.foreign == []
        page.close()


def test_tokens_show_the_writers_characters_one_box_a_word_and_their_sign(browser, runs):
    """Tokens are drawn as the user wrote them (café, not cafe; the emoji, not [UNK]; Arabic
    letters together), a word's pieces in one box (limoncello, not limo nce llo) with the summed
    score, whose sign shows in the hue and the line under it, with a legend; the concepts table
    says what a contribution is."""
    app = create_app(load_pretrained(runs["joint"]), runs["joint"])
    explained = TestClient(app).post("/api/explain", json={"text": WRITTEN}).json()
    signs = set()
    with serving(app) as url:
        page = open_page(browser, url)
        predict(page, WRITTEN)
        words = page.locator("#tokens .tok").all_inner_texts()
        assert {"café", "😀", "limoncello", "مطعم", "رائع"} <= set(words) and not {"cafe", "limo", "[UNK]"} & set(words)
        assert page.inner_text("#tokens") == WRITTEN
        for number, attribution in enumerate(explained["tokens"]):
            page.select_option("#token-target", str(number))
            boxes = page.locator("#tokens .tok")
            assert boxes.all_inner_texts() == [g["text"] for g in attribution["groups"]]
            shown = [boxes.nth(i).get_attribute("class").split()[-1] for i in range(boxes.count())]
            assert shown == ["pos" if g["score"] >= 0 else "neg" for g in attribution["groups"]]
            signs |= set(shown)
            assert page.inner_text("#tokens") == WRITTEN
            lines = page.evaluate("""() => [...document.querySelectorAll('#tokens .tok')]
                .map(box => getComputedStyle(box).borderBottomStyle)""")  # the sign, in more than a hue
            assert lines == [{"pos": "solid", "neg": "dashed"}[sign] for sign in shown]
        assert signs == {"pos", "neg"}
        legend = page.inner_text("#tokens-section .legend")
        assert "+ raises it" in legend and "− lowers it" in legend and "scores summed" in legend
        assert "a word's score is the sum of its tokens' scores" in page.inner_text("#token-method")
        from lucidlm.explain.explanation import CONTRIBUTION_MEANING

        assert page.inner_text("#contribution-meaning") == CONTRIBUTION_MEANING
        assert page.errors == [] and page.foreign == []
        page.close()


def test_the_page_fits_a_phone(browser, runs):
    """At 390 px the page (with a prediction, its concepts and tokens) scrolls only down, and every
    concept's "Set it to" control, the page's main one, lies within the screen."""
    app = create_app(load_pretrained(runs["joint"]), runs["joint"])
    with serving(app) as url:
        page = open_page(browser, url, viewport=PHONE)
        predict(page, REVIEWS[2])
        assert page.is_visible("#concepts-section")
        assert page.evaluate(BEYOND_THE_SCREEN, PHONE["width"]) == []
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        selects = page.locator("#concepts select[data-concept]")
        assert selects.count() == 4
        for i in range(selects.count()):
            box = selects.nth(i).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
            assert selects.nth(i).is_visible()
        assert (
            page.locator("#concepts td.set-value").first.evaluate("cell => getComputedStyle(cell, '::before').content")
            == '"Set it to: "'
        )
        page.select_option("#token-target", "4")  # the label's tokens, and the comparison after a change
        name = page.get_attribute("#concepts select[data-concept]", "data-concept")
        other = [
            o
            for o in page.locator(f"select[data-concept='{name}'] option").all_inner_texts()
            if o != page.input_value(f"select[data-concept='{name}']")
        ][0]
        page.select_option(f"select[data-concept='{name}']", other)
        page.wait_for_selector("#compare-section:not([hidden])")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], page.evaluate(
            BEYOND_THE_SCREEN, PHONE["width"]
        )
        assert page.errors == [] and page.foreign == []
        page.close()


def test_proto_page_shows_prototypes_with_their_training_examples(browser, runs):
    model = load_pretrained(runs["proto"])
    with serving(create_app(model, runs["proto"])) as url:
        page = open_page(browser, url)
        predict(page, REVIEWS[0])
        page.wait_for_selector("#prototypes-section:not([hidden])")
        assert page.is_hidden("#concepts-section") and page.is_hidden("#subnetwork-section")
        first = page.locator("#prototypes > li").first.inner_text()
        number = int(first.split()[1])
        assert model.projection.examples[number][0].text in first
        # first the label's integrated gradients (through the prototypes), then the attention
        assert (
            page.locator("#tokens .tok.pos, #tokens .tok.neg").count() > 3 and page.input_value("#token-target") == "0"
        )
        page.select_option("#token-target", "1")
        assert page.locator("#tokens .tok.att").count() > 3
        assert page.errors == [] and page.foreign == []
        page.close()


def test_confirm_a_concept_embedding_and_see_it_become_certain(browser, cebab_small, tiny_bert_dir):
    """With concept embeddings a confirmed value becomes certain (p_k one-hot), which can move the
    label: the page offers "sure" beside the value the model read, and shows what the model computes."""
    model = ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir), task=cebab_small.spec, concept_layer="embedding"
    ).eval()
    text = REVIEWS[1]
    before = model.predict(text)[0]
    read = before.concepts["service"].value
    other = next(v for v in model.spec.concept("service").values if v != read)
    expected = model.intervene(text, {"service": read})[0].after
    assert expected.probabilities != before.probabilities
    box, select = "#concepts input[data-confirm='service']", "select[data-concept='service']"
    with serving(create_app(model)) as url:
        page = open_page(browser, url)
        predict(page, text)
        page.select_option(select, other)  # another value is a correction: nothing to confirm
        page.wait_for_selector("#compare-section:not([hidden])")
        assert page.is_disabled(box)
        page.select_option(select, read)
        assert page.is_enabled(box) and page.is_hidden("#compare-section")
        page.check(box)
        page.wait_for_selector("#compare-summary:has-text('You confirmed')")
        assert page.inner_text("#compare-summary").startswith(f"You confirmed service = {read}, now certain.")
        shown = page.locator("#after dd").nth(model.spec.concept_names.index("service")).inner_text()
        assert shown == f"{read} (100.0%)"
        assert page.inner_text("#after .label-value") == expected.label
        page.click("#reset")
        assert not page.is_checked(box) and page.is_hidden("#compare-section")

        # An answer that arrives after the user took the correction back is not shown.
        intervene = model.intervene
        model.intervene = lambda *args, **kwargs: time.sleep(0.8) or intervene(*args, **kwargs)
        for undo in (lambda: page.uncheck(box), lambda: page.click("#reset")):
            page.check(box)
            undo()
            page.wait_for_timeout(1500)
            assert page.is_hidden("#compare-section") and not page.is_checked(box)
        assert page.errors == [] and page.foreign == []
        page.close()


def test_rewire_a_subnetwork_and_compare(browser, cebab_small, tiny_bert_dir):
    import torch

    model = SparseConceptLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec).eval()
    generator = torch.Generator().manual_seed(0)
    for layer in model.subnetworks.values():  # half of every mask pruned at random: weights to swap
        layer.mask.copy_(torch.rand(layer.mask.shape, generator=generator) < 0.5)
    with serving(create_app(model)) as url:
        page = open_page(browser, url)
        predict(page, REVIEWS[1])
        assert page.is_visible("#subnetworks-section") and page.locator("#subnetworks td.heat").count() == 16
        page.select_option("#subnetwork-concept", "service")
        page.select_option("#subnetwork-value", "Positive")
        page.fill("#subnetwork-fraction", "0.3")
        page.select_option("#subnetwork-score", "taylor")
        page.click("#subnetwork-run")
        page.wait_for_selector("#compare-section:not([hidden])")
        summary = page.inner_text("#compare-summary")
        assert "subnetwork of service was rewired toward Positive" in summary and "for this text only" in summary
        # The page shows what the model computes for the same rewiring (which it did not keep).
        expected = model.intervene(REVIEWS[1], SubnetworkRewiring("service", "Positive", fraction=0.3, score="taylor"))[
            0
        ]
        assert f"{expected.weights_changed:,} weights swapped" in summary and expected.weights_changed > 0
        service = expected.after.concepts["service"]
        shown = page.locator("#after dd").nth(model.spec.concept_names.index("service")).inner_text()
        assert shown == f"{service.value} ({100 * service.probabilities[service.value]:.1f}%)"
        assert page.inner_text("#after .label-value") == expected.after.label
        assert page.errors == [] and page.foreign == []
        page.close()
