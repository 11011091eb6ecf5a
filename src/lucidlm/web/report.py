"""``lucidlm report``: one self-contained HTML file about a saved run.

It holds the run's metrics (``run.json``); confusion matrices of the label and of every concept,
computed now from the model on a split of the run's data; per-concept metrics; for SparseCBM the
mask density per layer and the concepts' overlap heat map; for proto-lm the prototypes with their
nearest training examples; the evaluation suite's results when the run has them
(``evaluation.json``, ``evaluation.md``, PNG figures); the corrections people recorded on the run
and, for a run learned from corrections, its lineage beside its parent's metrics; and worked
examples, each explained and corrected. CSS is inline, figures are inline SVG or base64 PNG: the file opens with no network.
"""

from __future__ import annotations

import datetime
import json
import shlex
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix

from ..corrections.store import standing_of
from ..data import MISSING
from ..errors import LucidError
from ..explain.explanation import CONTRIBUTION_MEANING
from ..intervene import Showcase, choose_correction, showcase_corrections
from ..models import ConceptModel, PrototypeModel, SubnetworkModel
from ..run import CURVES_PNG, EVALUATION_JSON, EVALUATION_MD, STORE_FILE, Run
from ..version import __version__
from .figures import reliability_diagram, training_curves
from .html import (
    GREEN,
    RED,
    TOKEN_LEGEND,
    cell,
    confusion_table,
    esc,
    fmt,
    heatmap_svg,
    png_data_uri,
    shade,
    table,
    token_spans,
)
from .report_json import render_json

MISREAD = "background:#fde68a;"  # a concept value that differs from gold, or that the user set


def write_report(run_dir: str | Path, output: str | Path, **options) -> Path:
    """Render the report of ``run_dir`` (see ``build_report``) into the file ``output``."""
    output = Path(output)
    if output.is_dir():
        raise LucidError(f"{output}: is a folder; name the report's file, e.g. -o report.html")
    html = build_report(run_dir, **options)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(html, encoding="utf-8")
    return output


def build_report(run_dir: str | Path, split: str = "test", limit: int | None = None, examples: int = 3) -> str:
    """The report as one HTML string. Predictions (confusion matrices, worked examples) come from
    ``split`` of the run's data, limited to a fixed random ``limit`` rows when given."""
    from ..experiment import load_experiment_task, load_run

    if limit is not None and limit < 1:
        raise LucidError(f"--limit: expected a number of rows >= 1, found {limit}")
    if examples < 0:
        raise LucidError(f"--examples: expected a number >= 0, found {examples}")
    run_dir = Path(run_dir)
    model, record = load_run(run_dir)
    rows, rows_note = None, ""
    if record is None:
        rows_note = (
            "The run has no run.json (it was saved by save_pretrained, not lucidlm train), so no data to predict on."
        )
    else:
        try:
            task = load_experiment_task(record["experiment"]["data"])
        except LucidError as e:  # e.g. the data moved: the rest of the report still holds
            rows_note = f"The run's data could not be read, so nothing was predicted: {e}"
        else:
            rows = task.split(split)  # a wrong --split is the user's mistake: an error
    if rows is not None:
        total = len(rows)
        if limit is not None and limit < total:
            rows = rows.sample(limit, seed=0)
            rows_note = (
                f"Computed now on {len(rows):,} of the {total:,} {split} rows (a fixed random sample, --limit {limit})."
            )
        else:
            rows_note = f"Computed now on all {total:,} {split} rows."

    sections = [
        ("overview", "The run", overview(model, record, run_dir)),
        ("metrics", "Metrics", metrics_section(record)),
        ("calibration", "Calibration", calibration_section(model, record)),
    ]
    sections.append(("predictions", "Confusion matrices", predictions_section(model, rows, rows_note)))
    if isinstance(model, SubnetworkModel):
        sections.append(("subnetworks", "Concept subnetworks", subnetworks_section(model.subnetwork_statistics())))
    if isinstance(model, PrototypeModel):
        sections.append(("prototypes", "Prototypes", prototypes_section(model)))
    sections.append(("evaluation", "Evaluation suite", evaluation_section(run_dir, model)))
    sections.append(("corrections", "Corrections and lineage", corrections_section(run_dir, record)))
    sections.append(("examples", "Worked examples", examples_section(model, rows, examples)))
    return page(f"lucidlm report: {run_dir.name}", sections)


# ---- sections ---------------------------------------------------------------------------------
def overview(model, record: dict | None, run_dir: Path) -> str:
    spec, summary = model.spec, model.summary()
    facts = [
        ("family", model.family),
        ("mode", summary["mode"]),
        ("backbone", summary["backbone"]),
        ("backbone weights", summary["backbone_training"]),
        ("task", spec.name),
        ("label", f"{spec.label}: " + (", ".join(spec.classes) if spec.classes else "a number")),
    ]
    facts += [(f"concept {c.name}", ", ".join(c.values)) for c in spec.concepts]
    if summary.get("concept_objective"):
        facts.append(
            (
                "concept objective",
                {
                    "soft_targets": "soft_targets: cross-entropy per concept",
                    "cos3": "cos3: CB-LLM's cubed cosine similarity, one ReLU activation per statement",
                }.get(summary["concept_objective"], summary["concept_objective"]),
            )
        )
    if "random_intervention_rate" in summary:
        facts.append(("RandInt", summary["random_intervention_rate"]))
    if summary.get("intervention_loss_weight"):
        facts.append(("intervention-aware training (IntCEM)", f"loss weight {summary['intervention_loss_weight']:g}"))
    if summary.get("counterfactual_loss_weight"):
        facts.append(
            (
                "counterfactual-consistency training",
                f"loss weight {summary['counterfactual_loss_weight']:g}, on human edits of the training texts",
            )
        )
    if summary.get("intervention_holdout"):
        facts.append(
            (
                "intervenability tuning",
                f"label head tuned on {summary['intervention_holdout']:.0%} of the training "
                "rows, held out of joint training",
            )
        )
    if summary.get("mixup_alpha"):
        facts.append(
            (
                "concept-level mixup (C3M)",
                f"rows mixed in proportion μ ~ Beta({summary['mixup_alpha']:g}, "
                f"{summary['mixup_alpha']:g}), their losses alike",
            )
        )
    if "sparsity" in summary:
        facts.append(
            (
                "sparsity",
                f"{summary['sparsity']:.0%} of every concept's masked weights pruned ({summary['granularity']} level)",
            )
        )
    if "prototypes_per_class" in summary:
        facts.append(("prototypes", f"{summary['prototypes_per_class']} per class"))
    if record is not None:
        data = record["experiment"]["data"]
        facts.append(("data", f"{data.get('source')}" + (f" ({data['path']})" if data.get("path") else "")))
        training = record["experiment"].get("training", {})
        facts.append(
            (
                "training",
                ", ".join(
                    f"{k} {training[k]}" for k in ("epochs", "batch_size", "learning_rate", "seed") if k in training
                ),
            )
        )
    html = table(["", "value"], [(esc(k), esc(v)) for k, v in facts if v is not None], cls="facts")
    epochs = [h for h in model.training_history if "epoch" in h]
    if epochs:
        keys = [k for k in ("epoch", "loss", "dev_score") if any(k in h for h in epochs)]
        html += (
            "<h3>Training</h3>" + f"<figure>{training_curves(model.training_history)}<figcaption>Training loss and "
            "dev score (what model selection maximises) per epoch.</figcaption></figure>"
            + table(keys, [[fmt(h.get(k, "")) for k in keys] for h in epochs], cls="narrow")
        )
    return html


def calibration_section(model, record: dict | None) -> str:
    """The temperatures fitted on dev, the dev figures before and after, and the reliability
    diagram of each recorded split (docs/methods.md §7.2)."""
    t = model.temperatures
    parts = []
    if t.fitted_on is None:
        parts.append(
            '<p class="note">No temperature was fitted (training.calibrate was off, or the run predates '
            "calibration): the probabilities are the model's as trained.</p>"
        )
    elif "label" in t.before:
        before, after = t.before["label"], t.after["label"]
        parts.append(
            f"<p>Label temperature <strong>{fmt(t.label)}</strong>, fitted on {esc(t.fitted_on)} by NLL after "
            "training; every probability in this report, on the page and in the API is divided by it (accuracy "
            "is unchanged).</p>"
        )
        rows = [[esc(name), fmt(before[name]), fmt(after[name])] for name in ("ece", "nll", "confidence")]
        parts.append(table([f"{t.fitted_on}", "before (T = 1)", "after"], rows, cls="narrow"))
        if t.concepts:
            parts.append(
                table(
                    ["concept", "temperature", f"ECE before → after ({t.fitted_on})"],
                    [
                        [
                            esc(name),
                            fmt(value),
                            f"{fmt(t.before['concepts'][name]['ece'])} → {fmt(t.after['concepts'][name]['ece'])}",
                        ]
                        for name, value in t.concepts.items()
                    ],
                    "Concepts (the probabilities shown; the label reads the concepts as trained)",
                    "narrow",
                )
            )
    for split, metrics in ((record or {}).get("metrics") or {}).items():
        bins = (metrics.get("calibration") or {}).get("bins")
        if bins:
            task = metrics["task"]
            parts.append(
                f"<figure>{reliability_diagram(bins, f'reliability on {split}')}<figcaption>Reliability on "
                f"{esc(split)}: accuracy per confidence bin (15 bins; the dashed diagonal is a calibrated "
                f"model). ECE {fmt(task['ece'])}, NLL {fmt(task['nll'])}.</figcaption></figure>"
            )
    return "".join(parts) or '<p class="note">A regression task has no probabilities to calibrate.</p>'


def metrics_section(record: dict | None) -> str:
    if record is None or not record.get("metrics"):
        return '<p class="note">No metrics recorded: the run has no run.json.</p>'
    parts = []
    if record.get("metrics_stale"):
        parts.append(f'<p class="note"><strong>Stale:</strong> {esc(record["metrics_stale"])}.</p>')
    elif record.get("commits"):
        changes = "; ".join(", ".join(f"{k} {v}" for k, v in c["change"].items()) for c in record["commits"])
        parts.append(
            f'<p class="note">The model was changed after training ({len(record["commits"])} committed '
            f"change(s): {esc(changes)}); these metrics were measured again after the last one.</p>"
        )
    for split, metrics in record["metrics"].items():
        parts.append(f"<h3>{esc(split)} ({fmt(metrics.get('n', '?'))} rows)</h3>" + metrics_tables(metrics))
    return "".join(parts)


SUMMARY_ROWS = (
    ("task", "task"),
    ("concepts", "concepts (all)"),
    ("task_gold_concepts", "task, wrong concepts corrected to gold"),
    ("task_forced_concepts", "task, every concept forced to gold"),
)


def metrics_tables(metrics: dict) -> str:
    """A split's metrics: the summary rows, then one row per concept."""
    rows = [(label, metrics[key]) for key, label in SUMMARY_ROWS if isinstance(metrics.get(key), dict)]
    names = list(dict.fromkeys(k for _, values in rows for k, v in values.items() if not isinstance(v, dict)))
    html = table(
        [""] + names, [[esc(label)] + [fmt(values.get(n, "")) for n in names] for label, values in rows], cls="metrics"
    )
    per_concept = metrics.get("concepts", {}).get("per_concept", {})
    if per_concept:
        columns = list(dict.fromkeys(k for v in per_concept.values() for k in v))
        html += table(
            ["concept"] + columns,
            [
                [esc(name)]
                + [cell(fmt(v.get(c, "")), shade(v.get(c, 0)) if isinstance(v.get(c), float) else "") for c in columns]
                for name, v in per_concept.items()
            ],
            "Per concept",
            "metrics per-concept",
        )
    return html


def predictions_section(model, rows, note: str) -> str:
    if rows is None:
        return f'<p class="note">{esc(note)}</p>'
    inferred = model.infer(rows)
    spec = model.spec
    parts = [f'<p class="note">{esc(note)}</p>']
    if spec.is_regression:
        predicted = inferred["label_logits"][:, 0]
        mse = float(np.mean((predicted - rows.labels) ** 2))
        parts.append(f"<p>A regression task has no confusion matrix; mean squared error on these rows: {fmt(mse)}.</p>")
    else:
        predicted = inferred["label_logits"].argmax(-1)
        accuracy = float((predicted == rows.labels).mean())
        matrix = confusion_matrix(rows.labels, predicted, labels=list(range(len(spec.classes))))
        parts.append(
            confusion_table(
                matrix.tolist(), spec.classes, f"Label ({spec.label}): accuracy {accuracy:.3f} on these rows"
            )
        )
    concept_tables = []
    for k, concept in enumerate(spec.concepts if "concept_probs" in inferred else ()):
        known = rows.concepts[:, k] != MISSING
        if not known.any():
            continue
        gold, guess = rows.concepts[known, k], inferred["concept_probs"][k][known].argmax(-1)
        matrix = confusion_matrix(gold, guess, labels=list(range(len(concept.values))))
        caption = f"Concept {concept.name}: accuracy {float((gold == guess).mean()):.3f} on {int(known.sum()):,} rows with a gold value"
        concept_tables.append(
            f'<div class="grid-item">{confusion_table(matrix.tolist(), concept.values, caption)}</div>'
        )
    if concept_tables:
        parts.append(f'<h3>Concepts</h3><div class="grid">{"".join(concept_tables)}</div>')
    return "".join(parts)


def subnetworks_section(stats: dict) -> str:
    names = stats["concepts"]
    parts = [
        f"<p>Weights kept by every concept: {stats['shared_by_all']:.1%}. Each concept's density is the share of "
        "the masked weights its subnetwork keeps; owned alone, the share no other concept keeps.</p>"
    ]
    parts.append(
        table(
            ["concept", "density", "owned alone"],
            [[esc(n), fmt(stats["density"][n]), fmt(stats["owned_by_one"][n])] for n in names],
            cls="narrow",
        )
    )
    parts.append("<h3>Overlap of the concepts' masks (Jaccard)</h3>")
    parts.append(heatmap_svg(stats["jaccard"], names, names, "Jaccard overlap of the concept masks"))
    rows = [
        [esc(layer)] + [cell(f"{d:.1%}", shade(d)) for d in densities]
        for layer, densities in stats["density_per_layer"].items()
    ]
    parts.append("<h3>Mask density per layer</h3>" + table(["layer"] + names, rows, cls="density"))
    heads = stats.get("head_responsibility") or {}
    if heads:
        blocks = []
        for block, shares in heads.items():
            columns = [f"head {h}" for h in range(len(shares[0]))] if shares else []
            body = [[esc(n)] + [cell(f"{s:.2f}", shade(s)) for s in shares[k]] for k, n in enumerate(names)]
            blocks.append(f'<div class="grid-item">{table(["concept"] + columns, body, esc(block), "heads")}</div>')
        parts.append(
            "<h3>Attention heads: the share of each head's weights a concept keeps</h3>"
            f'<div class="grid">{"".join(blocks)}</div>'
        )
    return "".join(parts)


def prototypes_section(model) -> str:
    projection = model.projection
    if projection is None:
        return '<p class="note">No projection was run: the prototypes have no training examples to show.</p>'
    parts = [
        f"<p>{model.num_prototypes} prototypes, each shown by its nearest training examples"
        f"{' of its own class' if projection.own_class else ''}"
        f"{'; hard projection moved each onto its nearest example' if projection.hard else ''}.</p>"
    ]
    by_class: dict[str, list[int]] = {}
    for j in range(model.num_prototypes):
        by_class.setdefault(str(model.prototype_class_name(j)), []).append(j)
    for number, (name, prototypes) in enumerate(by_class.items()):
        cards = "".join(prototype_card(j, projection.examples[j]) for j in prototypes)
        heading = f"class {name}" if name != "None" else "all prototypes"
        parts.append(
            f'<details class="proto-class"{" open" if number == 0 else ""}>'
            f"<summary>{esc(heading)} ({len(prototypes)} prototypes)</summary>{cards}</details>"
        )
    return "".join(parts)


def prototype_card(
    j: int, examples, similarity: float | None = None, limit: int | None = None, prototype_class: str | None = None
) -> str:
    shown = examples[:limit] if limit else examples
    items = "".join(
        f"<li><q>{esc(e.text if e.text_pair is None else f'{e.text} ‖ {e.text_pair}')}</q> "
        f'<span class="muted">label {esc(e.label)} · distance {e.distance:.3f}'
        f"{' · attends to ' + esc(', '.join(e.top_tokens)) if e.top_tokens else ''}</span></li>"
        for e in shown
    )
    title = (
        f"Prototype {j}"
        + (f" of class {prototype_class}" if prototype_class is not None else "")
        + (f" · similarity {similarity:.3f}" if similarity is not None else "")
    )
    return f'<div class="card"><h4>{esc(title)}</h4><ol class="examples">{items}</ol></div>'


def evaluation_section(run_dir: Path, model=None) -> str:
    """The evaluation suite's files, whichever exist: results as tables, figures inline."""
    parts = []
    path = run_dir / EVALUATION_JSON
    if path.is_file():
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
            parts.append(f'<div class="evaluation">{render_json(results)}</div>')
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            parts.append(f'<p class="note">{EVALUATION_JSON} could not be read: {esc(e)}</p>')
    figures = sorted(run_dir.glob("*.png"), key=lambda p: (p.name != CURVES_PNG, p.name))
    for figure in figures:
        parts.append(
            f'<figure><img src="{png_data_uri(figure.read_bytes())}" alt="{esc(figure.stem.replace("_", " "))}">'
            f"<figcaption>{esc(figure.name)}</figcaption></figure>"
        )
    markdown = run_dir / EVALUATION_MD
    if markdown.is_file():
        parts.append(
            f"<details><summary>{EVALUATION_MD}, as written</summary>"
            f"<pre>{esc(markdown.read_text(encoding='utf-8', errors='replace'))}</pre></details>"
        )
    if not parts:
        suites = "faithfulness,causal,interventions,honesty" if isinstance(model, ConceptModel) else "faithfulness"
        command = f"lucidlm evaluate {shlex.quote(str(run_dir))} --suite {suites}"
        return (
            f'<p class="note">This run has no evaluation suite results ({EVALUATION_JSON}, {CURVES_PNG}). Run '
            f"<code>{esc(command)}</code>, then <code>lucidlm report {esc(shlex.quote(str(run_dir)))}</code> again: "
            "intervention curves, faithfulness against baselines and causal effects appear here.</p>"
        )
    return "".join(parts)


LATEST_RECORDS = 20  # the corrections table shows the latest; `lucidlm corrections list` shows all


def corrections_section(run_dir: Path, record: dict | None) -> str:
    """Where the run comes from (``run.json``'s lineage: the parent and the corrections learned
    from, metrics side by side) and the corrections recorded on it (its ``corrections.sqlite``)."""
    parts = []
    lineage = (record or {}).get("lineage")
    if lineage:
        parts.append(
            f"<p>Learned from <strong>{fmt(lineage['count'])}</strong> correction(s) of {fmt(lineage['texts'])} "
            f"text(s) ({fmt(lineage['concept_labels'])} concept values, {fmt(lineage['labels'])} labels) in "
            f"<code>{esc(lineage['store'])}</code>, fine-tuned from <code>{esc(lineage['parent'])}</code> "
            f"(fingerprint {esc(lineage['parent_fingerprint'][:12])}), with its settings.</p>"
        )
        rows = []
        for split, metrics in (record.get("metrics") or {}).items():
            own = metrics.get("task", {}).get("accuracy")
            parent = ((lineage.get("parent_metrics") or {}).get(split) or {}).get("task", {}).get("accuracy")
            change = "" if own is None or parent is None else f"{100 * (own - parent):+.1f} points"
            rows.append(
                [esc(split), "–" if parent is None else fmt(parent), "–" if own is None else fmt(own), esc(change)]
            )
        parts.append(
            table(["split", "parent's task accuracy", "this run's", "change"], rows, "Beside the parent", "metrics")
        )
    else:
        parts.append("<p>This run was trained from its data, not learned from corrections.</p>")
    run = Run(run_dir)
    store = run.corrections()
    if store is None:
        parts.append(
            f'<p class="note">No corrections recorded on this run (no {STORE_FILE}). Record them on the page '
            f"(<code>lucidlm serve</code>, signed in as a corrector) or with <code>lucidlm intervene RUN TEXT --set "
            f"concept=value --record</code>; <code>lucidlm learn</code> makes a new run from them.</p>"
        )
        return "".join(parts)
    try:
        every = store.records()
    finally:
        store.close()
    standing = standing_of(every)
    fingerprint = run.fingerprint()
    waiting = [r for r in standing if r.run_fingerprint == fingerprint]
    authors = sorted({r.author for r in every})
    retractions = sum(r.kind == "retraction" for r in every)
    parts.append(
        f"<p>{fmt(len(every))} record(s) in {STORE_FILE}: {fmt(len(standing))} standing correction(s), "
        f"{fmt(retractions)} retraction(s), by {fmt(len(authors))} people ({esc(', '.join(authors))}). "
        f"<strong>{fmt(len(waiting))}</strong> of this run's wait to be learned "
        f"(<code>lucidlm learn {esc(shlex.quote(str(run_dir)))} -o NEW_RUN</code>).</p>"
    )
    latest = every[-LATEST_RECORDS:]
    rows = [
        [
            fmt(r.id),
            esc(r.kind + (f" of {r.retracts}" if r.retracts else "")),
            esc(r.created_at[:19].replace("T", " ")),
            esc(r.author),
            esc(r.text[:80] + ("…" if len(r.text) > 80 else "")),
            esc(", ".join(f"{k} = {v}" for k, v in r.set_values.items())),
            esc(f"{r.label_before} → {r.label_after}" if r.kind == "correction" else ""),
            esc(r.gold_label or r.note or ""),
        ]
        for r in latest
    ]
    parts.append(
        table(
            ["id", "kind", "when (UTC)", "who", "text", "set or confirmed", "label before → after", "says"],
            rows,
            f"The latest {len(latest)} record(s)",
            "metrics",
        )
    )
    return "".join(parts)


def examples_section(model, rows, count: int) -> str:
    if rows is None or count == 0:
        return '<p class="note">No worked examples: no data to draw them from.</p>' if count else ""
    if isinstance(model, ConceptModel):  # the rows that show what a correction is for (``showcase_corrections``)
        showcases = showcase_corrections(model, rows, count)
    else:
        picks = np.linspace(0, len(rows) - 1, num=min(count, len(rows))).round().astype(int).tolist()
        showcases = [Showcase(i) for i in dict.fromkeys(picks)]
    parts = []
    for number, showcase in enumerate(showcases, start=1):
        i, text = showcase.row, rows.texts[showcase.row]
        try:
            parts.append(worked_example(model, number, text, rows.labels[i], rows.concepts[i], showcase))
        except LucidError as e:  # e.g. a text longer than the model reads
            parts.append(f'<article class="example"><h3>Example {number}</h3><p class="note">{esc(e)}</p></article>')
    return "".join(parts)


def worked_example(model, number: int, text: str, gold_label, gold_concepts: np.ndarray, showcase=None) -> str:
    spec = model.spec
    explanation = model.explain(text)
    prediction = explanation.prediction
    gold = float(gold_label) if spec.is_regression else spec.classes[int(gold_label)]
    gold_values = {c.name: (c.values[int(v)] if v != MISSING else None) for c, v in zip(spec.concepts, gold_concepts)}
    verdict = "" if spec.is_regression else " ✓" if prediction.label == gold else " ✗"
    probability = prediction.probabilities.get(prediction.label)
    parts = [
        f'<article class="example"><h3>Example {number}</h3><blockquote>{esc(text)}</blockquote>',
        f"<p>Gold label <strong>{fmt(gold)}</strong>; predicted <strong>{fmt(prediction.label)}</strong>"
        f"{f' ({probability:.1%})' if probability is not None else ''}{verdict}</p>",
    ]
    if explanation.concepts:
        top = max(abs(c.contribution) for c in explanation.concepts) or 1.0
        body = [
            [
                esc(c.concept),
                esc(gold_values.get(c.concept) or "–"),
                cell(esc(c.value), "" if gold_values.get(c.concept) in (None, c.value) else MISREAD),
                fmt(c.probability),
                cell(f"{c.contribution:+.3f}", shade(abs(c.contribution) / top, GREEN if c.contribution >= 0 else RED)),
                "–" if c.from_value is None else f"{c.from_value:+.3f}",
                "–" if c.from_text is None else f"{c.from_text:+.3f}",
            ]
            for c in explanation.concepts
        ]
        share = explanation.concept_values_share
        parts.append(
            '<div class="scroll">'
            + table(
                ["concept", "gold", "predicted", "probability", "contribution", "from value", "from text"],
                body,
                cls="narrow",
            )
            + "</div>"
            + f'<p class="muted meaning">{esc(CONTRIBUTION_MEANING)}</p>'
            + (
                ""
                if share is None
                else f"<p>The concept values account for <strong>{share:.0%}</strong> of this "
                "decision; the text beside them for the rest.</p>"
            )
        )
    if explanation.tokens:
        parts.append(TOKEN_LEGEND)
    for attribution in explanation.tokens:
        signed = attribution.method != "attention"
        parts.append(
            f'<p class="muted">{esc(attribution.target)} ({esc(attribution.method)})</p>'
            + token_spans(attribution, signed)
        )
    for match in explanation.prototypes:
        parts.append(
            prototype_card(match.prototype, match.nearest_examples, match.similarity, 2, match.prototype_class)
        )
    if explanation.concepts and isinstance(model, ConceptModel):
        parts.append(example_intervention(model, text, explanation, gold_values, showcase))
    return "".join(parts) + "</article>"


def example_intervention(model, text: str, explanation, gold_values: dict, showcase=None) -> str:
    title, result = choose_correction(model, text, explanation, gold_values, showcase)
    setting = ", ".join(f"{k} = {v}" for k, v in result.interventions.items())
    columns = "".join(
        f'<div class="side"><h4>{side}</h4>{prediction_summary(p, result.interventions)}</div>'
        for side, p in (("Before", result.before), (f"After {setting}", result.after))
    )
    change = (
        f"the label changes from {result.before.label} to {result.after.label}"
        if result.label_changed
        else f"the label stays {result.after.label}"
    )
    return f'<h4>{esc(title)}: {esc(change)}</h4><div class="compare">{columns}</div>'


def prediction_summary(prediction, changed: dict) -> str:
    rows = [[esc(name), cell(fmt(p), shade(p))] for name, p in prediction.probabilities.items()]
    rows += [
        [esc(name), cell(esc(c.value), MISREAD if name in changed else "")] for name, c in prediction.concepts.items()
    ]
    return f"<p>label <strong>{fmt(prediction.label)}</strong></p>" + table(["", ""], rows, cls="narrow")


# ---- the page ---------------------------------------------------------------------------------
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;line-height:1.45;margin:0}
header,main{max-width:72rem;margin:0 auto;padding:0 1.25rem}header{border-bottom:1px solid #d1d9e0;padding-bottom:.6rem}
h1{font-size:1.5rem;margin:1rem 0 .3rem}h2{font-size:1.25rem;margin:2rem 0 .6rem;border-bottom:1px solid #d1d9e0}
h3{font-size:1.05rem;margin:1.2rem 0 .4rem}h4{font-size:.95rem;margin:.8rem 0 .3rem}
nav ul{display:flex;flex-wrap:wrap;gap:.4rem 1.2rem;list-style:none;padding:0;margin:.4rem 0}
table{border-collapse:collapse;margin:.4rem 0 .8rem;font-size:.9rem}caption{text-align:left;font-weight:600;padding:.2rem 0}
th,td{padding:.25rem .55rem;border-bottom:1px solid #d1d9e0;text-align:right;font-variant-numeric:tabular-nums}
th[scope=row],thead th:first-child{text-align:left}thead th{color:#59636e;font-weight:600}
td .cell{display:block;padding:.15rem .3rem;border-radius:3px}
.muted,.note{color:#59636e}.note{font-style:italic}
.grid{display:flex;flex-wrap:wrap;gap:.5rem 2rem}.compare{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
.side{border:1px solid #d1d9e0;border-radius:8px;padding:.2rem .8rem;background:#f6f8fa}
.tokens{line-height:2.1;white-space:pre-wrap;overflow-wrap:anywhere}.tok{padding:.1rem .15rem;border-radius:3px}
.tok.pos{border-bottom:2px solid rgb(22,163,74)}.tok.neg{border-bottom:2px dashed rgb(220,38,38)}
.unread{color:#59636e;text-decoration:line-through;text-decoration-color:#d1d9e0}
.card{border:1px solid #d1d9e0;border-radius:8px;padding:.2rem .9rem;margin:.5rem 0}
.examples li{margin-bottom:.3rem}blockquote{margin:.4rem 0;padding:.4rem .9rem;border-left:4px solid #2563eb;background:#f6f8fa}
.example{border-top:1px dashed #d1d9e0;margin-top:1rem}figure img{max-width:100%}
.facts td,.kv td{text-align:left}
pre{white-space:pre-wrap;background:#f6f8fa;padding:.6rem;border-radius:6px;font-size:.85rem}
details>summary{cursor:pointer;font-weight:600;margin:.4rem 0}.evaluation{overflow-x:auto}
.evaluation h3,.evaluation h4,.evaluation h5,.evaluation h6{margin:.7rem 0 .3rem}.evaluation h5{font-size:.9rem}.evaluation h6{font-size:.85rem}
svg.heatmap{max-width:100%;height:auto}.grid-item,.scroll{max-width:100%;overflow-x:auto}
svg.figure{width:100%;max-width:34rem;height:auto;display:block}
.facts td,.density th[scope=row],.heads th[scope=row],caption,blockquote,q{overflow-wrap:anywhere}
@media (max-width:640px){header,main{padding:0 .7rem}table{font-size:.75rem}th,td{padding:.2rem .2rem}td .cell{padding:.1rem .2rem}
.compare{grid-template-columns:minmax(0,1fr)}.grid{gap:.5rem 1rem}blockquote{margin:.4rem 0}}
"""


def page(title: str, sections: list[tuple[str, str, str]]) -> str:
    generated = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    nav = "".join(f'<li><a href="#{key}">{esc(heading)}</a></li>' for key, heading, _ in sections)
    body = "".join(
        f'<section id="{key}" aria-labelledby="{key}-h"><h2 id="{key}-h">{esc(heading)}</h2>{html}</section>'
        for key, heading, html in sections
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
        f"<style>{STYLE}</style></head><body><header><h1>{esc(title)}</h1>"
        f'<p class="muted">lucidlm {__version__} · generated {generated}</p><nav aria-label="sections"><ul>{nav}</ul></nav>'
        f"</header><main>{body}</main></body></html>\n"
    )
