"""Are the explanations true? One entry, ``run_suite``, for every family; the results as JSON,
markdown tables and a PNG of the intervention curves.

Suites are ``Suite`` objects in the ``SUITES`` registry, each owning its options (a dataclass) and
its markdown section: ``faithfulness`` (tokens and concepts, see ``faithfulness``), ``causal``
(CEBaB's concept effects, see ``causal``), ``interventions`` (see ``curves``), ``honesty`` and
``concepts`` (the concept set). A suite or part that does not apply to a model (no concepts, no
CEBaB pairs, …) says why under ``skipped``. Adding one: a ``Suite`` subclass registered with
``SUITES.register("name")(MySuite())``; the CLI's ``--suite`` and ``run_suite`` take it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

from ..data import Split, Task
from ..errors import LucidError
from ..layout import CURVES_PNG, EVALUATION_JSON, EVALUATION_MD
from ..metrics import task_metrics
from ..models import ConceptModel, LucidModel
from ..registry import Registry
from .causal import average_effect_estimator, causal_applicability, causal_effects, cebab_concept_rows, load_cebab_pairs
from .concept_set import concept_set_quality
from .curves import EXACT_RANDOM_MAX_CONCEPTS, ORDERS, intervention_curves
from .faithfulness import FRACTIONS, concept_faithfulness, token_faithfulness
from .honesty import bottleneck_honesty
from .outputs import TextOutputs

RESULT_FILES = {"json": EVALUATION_JSON, "markdown": EVALUATION_MD, "plot": CURVES_PNG}


@dataclass
class SuiteContext:
    """What every suite reads: the model, the task, the evaluated split's name and rows, the model's
    outputs on texts (computed once, shared by the suites), the seed and the batch size."""

    model: LucidModel
    task: Task
    split: str
    rows: Split
    outputs: TextOutputs
    seed: int = 0
    batch_size: int = 64


@dataclass
class NoOptions:
    pass


class Suite:
    """An evaluation suite: one part of ``run_suite``'s results, under its registered name.

    ``Options``: its settings, a dataclass (``run_suite`` hands each suite the settings its
    ``Options`` has fields for); ``run(context, options)``: its results, a JSON-able dict (with
    ``skipped``: why, where it does not apply to the model); ``tables(results)``: its markdown
    section over several models' results (default: the results as JSON)."""

    Options: ClassVar[type] = NoOptions

    def run(self, context: SuiteContext, options) -> dict:
        raise NotImplementedError

    def tables(self, name: str, results: dict[str, dict]) -> list[str]:
        lines = [f"## {name}", ""]
        for model, r in results.items():
            if name in r:
                lines += [f"{model}:", "", "```json", json.dumps(r[name], indent=2), "```", ""]
        return lines


SUITES: Registry = Registry("suite", base=Suite)


@dataclass
class FaithfulnessOptions:
    samples: int = 200  # rows drawn (with the seed) for token faithfulness, the slow part
    random_repeats: int = 5


class Faithfulness(Suite):
    """Token faithfulness (ERASER's comprehensiveness and sufficiency against baselines) and concept
    faithfulness (``faithfulness``)."""

    Options = FaithfulnessOptions

    def run(self, context, options):
        return {
            "tokens": token_faithfulness(
                context.model, context.rows, options.samples, context.seed, FRACTIONS, context.batch_size
            ),
            "concepts": concept_faithfulness(
                context.model, context.outputs, context.rows, context.seed, options.random_repeats
            ),
        }

    def tables(self, name, results):
        return _token_table(results) + _concept_table(results)


@dataclass
class CausalOptions:
    cebab: str | Path | None = None  # the folder of CEBaB's JSON files
    causal_splits: Sequence[str] = ("dev", "test")  # whose counterfactual pairs are scored
    baseline_split: str = "train_inclusive"  # the baselines' training pairs and texts
    pair_protocol: str = "originals"  # or ``all``, CEBaB's full protocol
    rewiring: tuple[float, str] | None = (0.1, "taylor")  # SparseCBM's own estimate (fraction, score); None: not run


class Causal(Suite):
    """CEBaB's causal concept effects: the model's own estimate against baselines (``causal``)."""

    Options = CausalOptions

    def run(self, context, options):
        cebab, protocol = options.cebab, options.pair_protocol
        reason = causal_applicability(context.model, cebab)
        if reason:
            return {"skipped": reason}
        train_pairs = load_cebab_pairs(cebab, options.baseline_split, with_label_effect=True, protocol=protocol)
        estimator = average_effect_estimator(train_pairs)
        train_rows = cebab_concept_rows(cebab, options.baseline_split)
        return {
            "data": str(cebab),
            "baseline_training_split": options.baseline_split,
            "baseline_training_pairs": len(train_pairs),
            "baseline_training_texts": len(train_rows[0]),
            "pairs": protocol,
            "splits": {
                name: causal_effects(
                    context.model,
                    context.outputs,
                    load_cebab_pairs(cebab, name, protocol=protocol),
                    estimator,
                    train_rows,
                    options.rewiring,
                )
                for name in options.causal_splits
            },
        }

    def tables(self, name, results):
        return _causal_tables(results)


@dataclass
class InterventionOptions:
    random_repeats: int = 5


class Interventions(Suite):
    """Intervention curves: task accuracy as 0..K concepts are set to gold, by policy (``curves``)."""

    Options = InterventionOptions

    def run(self, context, options):
        return intervention_curves(context.model, context.outputs, context.rows, context.seed, options.random_repeats)

    def tables(self, name, results):
        return _curve_table(results)


@dataclass
class HonestyOptions:
    black_box_accuracy: float | None = None  # the black box's accuracy on the split, for completeness


class Honesty(Suite):
    """Is the bottleneck honest? Completeness, forced concepts, responsiveness (``honesty``)."""

    Options = HonestyOptions

    def run(self, context, options):
        task = context.task
        return bottleneck_honesty(
            context.model, context.outputs, task.train, context.rows, options.black_box_accuracy, dev=task.dev
        )

    def tables(self, name, results):
        return _honesty_table(results)


@dataclass
class ConceptSetOptions:
    statements: object = None  # an automatic concept set's statements (experiment.automatic_concept_sources)
    human_concepts: dict | None = None  # the human concept values of the split's rows, for agreement


class ConceptSet(Suite):
    """Is the concept set any good? Activations, dead and duplicate statements, agreement (``concept_set``)."""

    Options = ConceptSetOptions

    def run(self, context, options):
        return concept_set_quality(
            context.model, context.outputs, context.rows, options.statements, options.human_concepts
        )

    def tables(self, name, results):
        return _concept_set_tables(results)


SUITES.register("faithfulness")(Faithfulness())
SUITES.register("causal")(Causal())
SUITES.register("interventions")(Interventions())
SUITES.register("honesty")(Honesty())
SUITES.register("concepts")(ConceptSet())


def parse_suites(text: str | Sequence[str]) -> list[str]:
    """``"faithfulness,causal"`` -> the suites, in the order given; unknown names are an error."""
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = [s for s in names if s not in SUITES]
    if unknown:
        raise LucidError(f"--suite: unknown suite(s) {unknown}; expected a comma-separated list of {SUITES.names}")
    if not names:
        raise LucidError(f"--suite: no suite named; expected a comma-separated list of {SUITES.names}")
    return list(dict.fromkeys(names))


def describe(model) -> dict:
    summary = model.summary()
    # RandInt: gold concepts mixed in while the label head trained (joint, sequential; 0 = none)
    return {
        "family": model.family,
        "mode": summary["mode"],
        "backbone": summary["backbone"],
        "random_intervention_rate": summary.get("random_intervention_rate"),
        "concept_objective": summary.get("concept_objective"),  # how x→c learnt (bottlenecks; label_free)
        "concepts": model.spec.concept_names if isinstance(model, ConceptModel) else [],
    }


def run_suite(
    model: LucidModel,
    task: Task,
    suites: str | Sequence[str] | None = None,
    split: str = "test",
    seed: int = 0,
    batch_size: int = 64,
    options: dict[str, dict] | None = None,
    **settings,
) -> dict:
    """Run the named suites (default: every registered one) on ``task``'s ``split``; the same seed
    gives the same results.

    ``settings`` go to every chosen suite whose ``Options`` has a field of that name (``samples``:
    token faithfulness's rows; ``random_repeats``; ``cebab``, ``causal_splits``, ``baseline_split``,
    ``pair_protocol``, ``rewiring``: the causal suite's; ``black_box_accuracy``: honesty's;
    ``statements``, ``human_concepts``: the concept set's); ``options``: suite name → its settings
    alone. A setting no registered suite takes is an error."""
    suites = parse_suites(SUITES.names if suites is None else suites)
    known = {f.name for suite in SUITES.names for f in fields(SUITES.get(suite).Options)}
    unknown = sorted(set(settings) - known) + sorted(
        f"{name}.{key}"
        for name, given in (options or {}).items()
        for key in given
        if name not in SUITES or key not in {f.name for f in fields(SUITES.get(name).Options)}
    )
    if unknown:
        raise LucidError(f"run_suite: unknown setting(s) {unknown}; the suites take {sorted(known)}")
    evaluated = task.split(split)
    outputs = TextOutputs(model, batch_size)
    context = SuiteContext(model, task, split, evaluated, outputs, seed, batch_size)
    results = {"model": describe(model), "split": split, "n": len(evaluated), "seed": seed, "suites": suites}
    if not model.spec.is_regression:
        results["task"] = task_metrics(
            model.spec, evaluated.labels, outputs.get(evaluated.texts, evaluated.text_pairs)["label_logits"]
        )
    for name in suites:
        suite = SUITES.get(name)
        names = {f.name for f in fields(suite.Options)}
        chosen = {k: v for k, v in settings.items() if k in names} | (options or {}).get(name, {})
        results[name] = suite.run(context, suite.Options(**chosen))
    return results


# ---- reports ---------------------------------------------------------------------------------


def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _applicable(results: dict[str, dict], get) -> tuple[dict[str, dict], list[str]]:
    """The models whose part ``get(result)`` ran, and a note for each one it does not apply to."""
    ran, notes = {}, []
    for name, result in results.items():
        part = get(result)
        if part is None:
            continue
        if "skipped" in part:
            notes.append(f"- {name}: {part['skipped']}")
        else:
            ran[name] = part
    return ran, (["", "Not applicable:", ""] + notes if notes else [])


def render_markdown(
    results: dict[str, dict], title: str = "Are the explanations true?", command: str | None = None
) -> str:
    """Tables of one or several models' ``run_suite`` results (name -> results)."""
    lines = [f"# {title}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    first = next(iter(results.values()))
    lines += [f"Split `{first['split']}`, seed {first['seed']}."]
    lines += [
        "",
        "| model | family | mode | concept objective | RandInt | rows | task accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        acc, randint = r.get("task", {}).get("accuracy"), r["model"].get("random_intervention_rate")
        lines.append(
            f"| {name} | {r['model']['family']} | {r['model']['mode'] or '–'} | {r['model'].get('concept_objective') or '–'} | "
            f"{'–' if randint is None else f'{randint:g}'} | {r['n']} | {_f(acc)} |"
        )
    lines += [
        "",
        "RandInt: the probability with which each concept was replaced by its gold value while the label "
        "head trained (`random_intervention_rate`; 0: it read predicted concepts only). Concept objective: how "
        "the concept layer learnt its concepts (`concept_objective`: `soft_targets`, cross-entropy per concept; "
        "`cos3`, CB-LLM's cubed cosine similarity, one activation per statement).",
    ]
    lines.append("")
    for name in SUITES.names:
        if any(name in r for r in results.values()):
            lines += SUITES.get(name).tables(name, results)
    return "\n".join(lines).rstrip() + "\n"


def _concept_set_tables(results: dict[str, dict]) -> list[str]:
    lines = ["## Is the concept set any good?", ""]
    ran, notes = _applicable(results, lambda r: r.get("concepts"))
    for name, q in ran.items():
        lines += [
            f"{name}: {q['concepts']} concepts on {q['rows']} rows. Never fire (active on under 1% of rows): "
            f"{', '.join(q['never_fire']) or 'none'}. Near-duplicates (statement cosine > {q['near_duplicate_threshold']}): "
            + (
                ", ".join(f"{d['concepts'][0]} ~ {d['concepts'][1]} ({d['cosine']:.2f})" for d in q["near_duplicates"])
                or "none"
            )
            + ".",
            "",
            "| concept | mean p(yes) | std | active share | 10% / 50% / 90% |",
            "|---|---|---|---|---|",
        ]
        for concept, a in q["activations"].items():
            lines.append(
                f"| {concept} | {_f(a['mean'])} | {_f(a['std'])} | {_f(a['firing'])} | {' / '.join(_f(x) for x in a['quantiles'])} |"
            )
        lines += ["", "Concepts the label layer reads, per class (weight: the class logit's rise from no to yes):", ""]
        for label, rows in q["label_layer"].items():
            lines.append(f"- {label}: " + (", ".join(f"{r['concept']} ({r['weight']:+.2f})" for r in rows) or "none"))
        if q.get("human_agreement"):
            lines += ["", "| concept | human label | ROC AUC |", "|---|---|---|"]
            lines += [f"| {r['concept']} | {r['human']} | {_f(r['auc'])} |" for r in q["human_agreement"]]
        lines.append("")
    return lines + notes + [""]


def _honesty_table(results: dict[str, dict]) -> list[str]:
    lines = ["## Is the bottleneck honest?", ""]
    ran, notes = _applicable(results, lambda r: r.get("honesty"))
    if not ran:
        return lines + notes[1:] + [""]
    names = list(next(iter(ran.values()))["accuracy_change_one_concept_corrected"])
    lines += [
        "Completeness η = (a_c − a_r) / (a_b − a_r) (Yeh et al. 2020): a_c the accuracy of the best predictor "
        "from the gold concept values alone (chosen on dev among logistic regressions of five strengths and "
        "gradient-boosted trees; its name under the table), a_r chance (the majority class), a_b the black box's accuracy (or the "
        "model's own). Read: the same regression on the concept values the model predicts, and its η (the model's "
        "own completeness); task accuracy above that a_c is what the label reads beyond the values it passes on. "
        "Forced: the model's accuracy with every concept forced to gold. Then the accuracy change "
        "when one concept alone is set to gold, as a person's statement sets it (`intervene`).",
        "",
        "| model | task acc | all concepts forced | a_c | a_c read | a_r | a_b | completeness | completeness read | "
        + " | ".join(names)
        + " |",
        "|---|---|---|---|---|---|---|---|---|" + "---|" * len(names),
    ]
    for name, h in ran.items():
        changes = [f"{h['accuracy_change_one_concept_corrected'].get(n, float('nan')):+.3f}" for n in names]
        lines.append(
            f"| {name} | {_f(h['task_accuracy'])} | {_f(h['task_accuracy_all_concepts_forced'])} | "
            f"{_f(h['concept_values_accuracy'])} | {_f(h.get('predicted_values_accuracy'))} | "
            f"{_f(h['chance_accuracy'])} | {_f(h['black_box_accuracy'])} ({h['black_box']}) | "
            f"{_f(h['completeness'])} | {_f(h.get('completeness_of_predicted_values'))} | " + " | ".join(changes) + " |"
        )
    chosen = [f"{name}: {h['concept_predictor']}" for name, h in ran.items() if h.get("concept_predictor")]
    if chosen:
        lines += ["", "Concept → label predictor chosen on dev: " + "; ".join(chosen) + "."]
    responsive = {name: h for name, h in ran.items() if h.get("responsiveness")}
    if responsive:
        lines += [
            "",
            "What a correction does, and what the values carry. Responsiveness: on the rows with a concept the "
            "model misreads, exactly those concepts set to gold; the share of those rows whose label changes, and of "
            "the changed labels the shares changed to the gold label and away from it (it was gold before). Values' "
            "share: the mean over the rows of Σ|value part| / Σ(|value part| + |text part|) of the concepts' "
            "contributions to the decision; same from values: the share of decisions the concept values alone "
            "(nothing of the text beside them) make the same.",
            "",
            "| model | rows misread | label changed | to gold | away from gold | values' share | same from values |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, h in responsive.items():
            r = h["responsiveness"]
            lines.append(
                f"| {name} | {r['rows_misread']} | {_f(r['changed_share'])} | {_f(r['to_gold_share'])} | "
                f"{_f(r['away_from_gold_share'])} | {_f(h.get('concept_values_share'))} | "
                f"{_f(h.get('decisions_from_values_alone'))} |"
            )
    return lines + notes + [""]


def _token_table(results: dict[str, dict]) -> list[str]:
    lines = ["## Token faithfulness", ""]
    ran, notes = _applicable(results, lambda r: r.get("faithfulness", {}).get("tokens"))
    if not ran:
        return lines + notes[1:] + [""]
    part = next(iter(ran.values()))
    ks = ", ".join(f"{round(100 * k)}" for k in part["fractions"])
    lines += [
        f"AOPC over k ∈ {{{ks}}}% of the tokens, deleted from the input ids (special tokens kept; ERASER). "
        "Comprehensiveness = p(target | x) − p(target | x without its top-k% tokens), higher is more faithful; "
        "sufficiency = p(target | x) − p(target | only its top-k% tokens), lower is more faithful. "
        "Target: the predicted label, or each concept's predicted value (row `concepts`: the mean over the concepts, "
        "each through its own path: SparseCBM's through its subnetwork). Explainers: the model's own token "
        "explanation, gradient × input, and random scores.",
        "",
        "| model | target | explainer | comprehensiveness ↑ | sufficiency ↓ | rows |",
        "|---|---|---|---|---|---|",
    ]
    for name, part in ran.items():
        targets = part["targets"]
        groups = {"label": [t for t in targets if t == "label"], "concepts": [t for t in targets if t != "label"]}
        for group, members in groups.items():
            if not members:
                continue
            explainers = list(targets[members[0]])
            for explainer in explainers:
                comp = sum(targets[t][explainer]["comprehensiveness"]["aopc"] for t in members) / len(members)
                suff = sum(targets[t][explainer]["sufficiency"]["aopc"] for t in members) / len(members)
                label = f"concepts ({len(members)})" if group == "concepts" else group
                own = " (own)" if explainer == part["own_explainer"] else ""
                lines.append(f"| {name} | {label} | {explainer}{own} | {_f(comp)} | {_f(suff)} | {part['n']} |")
    samples = {f"{p['n']} of {p['sampled_from']}" for p in ran.values()}
    lines += ["", f"Rows: {', '.join(sorted(samples))} drawn with seed {part['seed']}."]
    return lines + notes + [""]


def _concept_table(results: dict[str, dict]) -> list[str]:
    lines = ["## Concept faithfulness", ""]
    ran, notes = _applicable(results, lambda r: r.get("faithfulness", {}).get("concepts"))
    if not ran:
        return lines + notes[1:] + [""]
    lines += [
        "Remove the m concepts that contribute most to the predicted label (label-head weight × activation), "
        "m = 1 … K−1, or m random ones (mean of several random orders): comprehensiveness = drop of the "
        "predicted label's probability (↑ for the most contributing, vs random); sufficiency = drop when all "
        "*but* them are removed (↓). Removal: `unknown` sets the concept to its value unknown; `mean` replaces "
        "its activation by its mean over the rows. AOPC: mean over m.",
        "",
        "| model | removal | concepts removed | comprehensiveness | sufficiency | rows |",
        "|---|---|---|---|---|---|",
    ]
    for name, part in ran.items():
        for how, orders in part["modes"].items():
            for order, curves in orders.items():
                lines.append(
                    f"| {name} | {how} | {order.replace('_', ' ')} | {_f(curves['comprehensiveness']['aopc'])} "
                    f"| {_f(curves['sufficiency']['aopc'])} | {part['n']} |"
                )
    return lines + notes + [""]


def _causal_tables(results: dict[str, dict]) -> list[str]:
    lines = ["## Causal concept effects (CEBaB)", ""]
    ran, notes = _applicable(results, lambda r: r.get("causal"))
    if not ran:
        return lines + notes[1:] + [""]
    part = next(iter(ran.values()))
    lines += [
        f"ICaCE = p(y | target) − p(y | source) over the five classes, for every counterfactual pair of the protocol "
        f"`{part['pairs']}` (`originals`: an original and its edit that changed one aspect a→b; `all`: CEBaB's full "
        "protocol, every ordered pair of texts sharing an original that differ in exactly one aspect). Estimators, all on the "
        "same model: `concept_intervention` = p(y | source, concept set a→b) − p(y | source); "
        f"`average_training_effect` = the mean true label-distribution change of the {part['baseline_training_split']} pairs "
        f"({part['baseline_training_pairs']}) with the same aspect a→b; `s_learner` = a logistic regression from the aspects' "
        f"values to the model's predicted class on the {part.get('baseline_training_texts', '?')} {part['baseline_training_split']} "
        "texts, with the aspect set to b minus a; `matching` = the model's mean output on the training texts whose aspect values "
        "are the source's with the aspect set to b, minus its output on the source; `subnetwork_rewiring` (SparseCBM) = "
        "p(y | source, the aspect's subnetwork rewired toward b for this text) − p(y | source). Scores (lower is better): L2 = ‖ICaCE − EICaCE‖, "
        "cosine = 1 − cos, norm diff = | ‖ICaCE‖ − ‖EICaCE‖ |, means over pairs. ‖ICaCE‖: how much the model moves.",
        "",
        "| model | split | pairs | ‖ICaCE‖ | estimator | L2 ↓ | cosine ↓ | norm diff ↓ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    per_aspect = []
    for name, part in ran.items():
        for split, effects in part["splits"].items():
            for estimator, scores in effects["estimators"].items():
                if "skipped" in scores:
                    lines.append(
                        f"| {name} | {split} | {effects['n_pairs']} | {_f(effects['icace_norm']['overall']['mean'])} "
                        f"| {estimator} | – | – | – |"
                    )
                    continue
                o = scores["overall"]
                lines.append(
                    f"| {name} | {split} | {o['n']} | {_f(effects['icace_norm']['overall']['mean'])} | {estimator} "
                    f"| {_f(o['l2'])} | {_f(o['cosine'])} | {_f(o['norm_diff'])} |"
                )
                per_aspect.append((name, split, estimator, scores["per_aspect"]))
    if per_aspect:
        aspects = list(per_aspect[0][3])
        lines += [
            "",
            "Per aspect, L2 / cosine / norm diff:",
            "",
            "| model | split | estimator | " + " | ".join(aspects) + " |",
            "|---|---|---|" + "---|" * len(aspects),
        ]
        for name, split, estimator, scores in per_aspect:
            cells = [
                f"{_f(scores[a]['l2'])} / {_f(scores[a]['cosine'])} / {_f(scores[a]['norm_diff'])}"
                if a in scores
                else "–"
                for a in aspects
            ]
            lines.append(f"| {name} | {split} | {estimator} | " + " | ".join(cells) + " |")
    return lines + notes + [""]


def _curve_table(results: dict[str, dict]) -> list[str]:
    lines = ["## Intervention curves", ""]
    ran, notes = _applicable(results, lambda r: r.get("interventions"))
    if not ran:
        return lines + notes[1:] + [""]
    width = max(len(p["k"]) for p in ran.values())
    lines += [
        "Task accuracy with m concepts set to gold (m = 0 … K), chosen at random (its expectation: the mean over every "
        f"set of m concepts; with more than {EXACT_RANDOM_MAX_CONCEPTS} concepts the mean over the random orders named), most "
        "uncertain first (highest entropy), largest expected label change first (Σ_v p_kv·TV(ŷ, ŷ[k := v])), most likely to "
        "change the label first (label_change, Σ_{v ≠ v̂} p_kv·[ŷ[k := v] ≠ ŷ]: the page's next question) or by a learned "
        "policy (IntCEM as published), each set "
        "as a person's statement sets it: a concept already predicted right stays as it is where its forced logits are "
        "only a typical reading of the value (scalar logits) and becomes certain where the intervention is one-hot "
        "(concept embeddings, probabilities).",
        "",
        "| model | order | " + " | ".join(f"m={m}" for m in range(width)) + " |",
        "|---|---|" + "---|" * width,
    ]
    for name, part in ran.items():
        for order in (o for o in ORDERS if o in part):  # results from before a policy existed lack it
            cells = [_f(x) for x in part[order]] + [""] * (width - len(part[order]))
            sampled = order == "random" and part.get("random_repeats")
            lines.append(
                f"| {name} | {f'random ({sampled} orders)' if sampled else order} | " + " | ".join(cells) + " |"
            )
    return lines + notes + [""]


def plot_intervention_curves(results: dict[str, dict], path: str | Path) -> Path | None:
    """A PNG of every model's curves (name -> results), one panel a model so that many models stay
    readable; None when no model has them."""
    curves = {
        name: r["interventions"]
        for name, r in results.items()
        if "interventions" in r and "skipped" not in r["interventions"]
    }
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    styles = {
        "uncertainty": ("most uncertain first", "o", "-", "C0"),
        "random": ("random", "x", "--", "C1"),
        "expected_change": ("largest expected change first", "s", ":", "C2"),
        "label_change": ("most likely to change the label first", "^", "-.", "C3"),
        "learned": ("learned policy (IntCEM)", "d", "-", "C4"),
    }
    columns = min(len(curves), 4)
    rows = -(-len(curves) // columns)
    figure, panels = plt.subplots(
        rows, columns, figsize=(max(3.4 * columns, 7), 2.6 * rows + 0.8), squeeze=False, layout="constrained"
    )
    for axes, (name, part) in zip(panels.flat, curves.items()):
        for order, (label, marker, line, color) in styles.items():
            if order in part:
                axes.plot(part["k"], part[order], marker=marker, markersize=3, linestyle=line, color=color, label=label)
        axes.set_title(name, fontsize=8)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
    for axes in panels.flat[len(curves) :]:
        axes.set_visible(False)
    for i, axes in enumerate(panels.flat[: len(curves)]):
        if i + columns >= len(curves):  # the lowest panel of its column
            axes.set_xlabel("concepts set to gold", fontsize=7)
    for axes in panels[:, 0]:
        axes.set_ylabel("task accuracy", fontsize=7)
    handles, labels = panels.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False)
    figure.suptitle(f"Intervention curves ({next(iter(results.values()))['split']})", fontsize=10)
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(
    results: dict[str, dict],
    directory: str | Path,
    command: str | None = None,
    files: dict[str, str] = RESULT_FILES,
    title: str = "Are the explanations true?",
) -> dict[str, Path]:
    """``evaluation.json``, ``evaluation.md`` and ``intervention_curves.png`` in ``directory``."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise LucidError(f"{directory}: exists and is not a folder")
    directory.mkdir(parents=True, exist_ok=True)
    written = {"json": directory / files["json"], "markdown": directory / files["markdown"]}
    written["json"].write_text(json.dumps({"command": command, "results": results}, indent=2))
    written["markdown"].write_text(render_markdown(results, title, command))
    plot = plot_intervention_curves(results, directory / files["plot"])
    if plot is not None:
        written["plot"] = plot
    return written
