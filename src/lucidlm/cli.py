"""Interpretable language-model classifiers: train, evaluate, predict, explain, correct (intervene), demo, report, serve and concepts.

Every command is ``lucidlm COMMAND --help``; ``evaluate --suite`` measures whether the explanations are true.

Tables and progress bars for people, ``--json`` for programs. A user error prints one line
(``error: ...``) and exits with status 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import LucidError
from .explain.explanation import CONTRIBUTION_MEANING
from .progress import show_progress_lines, shown_progress
from .run import RECORDS, RUN_FILE, Run

# markdown: docstrings' wrapped lines join into paragraphs, as a person reads them
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0], rich_markup_mode="markdown")
out = Console()
err = Console(stderr=True)
STATE = {"debug": False}
CORRECTIONS_OPTION = typer.Option(
    None,
    "--corrections",
    help="The corrections store: a SQLAlchemy URL "
    "(postgresql+psycopg://…) or a SQLite file; default RUN_DIR/corrections.sqlite.",
)
TOKEN_VARIABLE = "LUCIDLM_TOKEN"  # a store with users: the CLI acts as the user whose token this is


def acting_user(store, role: str, by: str | None = None):
    """Who a command that writes to ``store`` acts as (a ``User``). A store without users belongs to
    whoever can open it (an admin named by ``--by``, else this machine's user name); once it has users, the command needs the token
    of one with ``role`` in $LUCIDLM_TOKEN (an environment variable: a command line is visible to
    everyone on the machine), and acts as them."""
    import getpass

    from .corrections import User, authenticate
    from .corrections.access import A_ROLE

    if not store.users():
        return User(by or getpass.getuser(), "admin")
    token = os.environ.get(TOKEN_VARIABLE, "").strip()
    if not token:
        raise LucidError(f"{store.safe_url} has users: this needs {A_ROLE[role]}'s token in ${TOKEN_VARIABLE}")
    user = authenticate(store, token)
    if user is None:
        raise LucidError(f"${TOKEN_VARIABLE} is not the token of one of {store.safe_url}'s users")
    if not user.may(role):
        raise LucidError(f"{user.name} is {A_ROLE[user.role]}: this needs {A_ROLE[role]}")
    if by is not None and by != user.name:
        raise LucidError(f"--by {by}: the token is {user.name}'s; a store with users records who holds the token")
    return user


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs.")):
    STATE["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def user_errors(command):
    """One clear line and exit 1 for a user's mistake; the traceback only with --debug."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LucidError as e:
            if STATE["debug"]:
                raise
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def emit_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


@app.command()
@user_errors
def train(
    config: Path = typer.Argument(..., help="Experiment YAML (see configs/)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Where to save the run."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics as JSON."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the interrupted run whose checkpoint is in the run folder."
    ),
):
    """Train a model from a config, choose it on dev, evaluate on dev and test, save the run.
    Several processes (accelerate launch, torchrun) train it data-parallel; the main one writes."""

    from .experiment import read_experiment, run_experiment
    from .training import process_state

    experiment = read_experiment(config, output_dir)
    if experiment.output_dir.exists() and not experiment.output_dir.is_dir():
        raise LucidError(f"{experiment.output_dir}: exists and is not a folder")
    experiment.training.progress = experiment.training.progress and not as_json
    show_progress_lines()
    _, metrics = run_experiment(experiment, resume=resume)
    if not process_state().is_main_process:
        return
    if as_json:
        emit_json({"run_dir": str(experiment.output_dir), "metrics": metrics})
        return
    for split, m in metrics.items():
        show_metrics(m, f"{split} ({m['n']} rows)")
    out.print(f"saved to [bold]{experiment.output_dir}[/]")


@app.command()
@user_errors
def evaluate(
    run_dir: Path = typer.Argument(..., help="A saved run."),
    split: str = typer.Option("test", "--split", help="train, dev or test."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="Read the data from this config instead of the run's."
    ),
    as_json: bool = typer.Option(False, "--json"),
    suite: Optional[str] = typer.Option(
        None,
        "--suite",
        help="Are the explanations true? Comma-separated: faithfulness, causal, interventions, honesty, concepts.",
    ),
    output_dir: Optional[Path] = typer.Option(
        None,
        "--output-dir",
        "-o",
        help="Where --suite writes evaluation.json, evaluation.md, intervention_curves.png (default: RUN_DIR).",
    ),
    samples: int = typer.Option(200, "--samples", help="Rows drawn (seeded) for token faithfulness, the slow part."),
    seed: int = typer.Option(0, "--seed", help="Seed of the drawn rows and the random baselines."),
    cebab: Optional[Path] = typer.Option(
        None,
        "--cebab",
        help="CEBaB's folder, for the causal suite's (original, edit) pairs (default: the run's data, if CEBaB).",
    ),
    black_box: Optional[Path] = typer.Option(
        None,
        "--black-box",
        help="A saved black-box run (e.g. the standard model's) whose accuracy on --split completeness reads (honesty).",
    ),
    pairs: str = typer.Option(
        "originals",
        "--pairs",
        help="The causal suite's pairs: originals (original → edit) or all (CEBaB's full protocol).",
    ),
):
    """Evaluate a saved run on a split of its data; with --suite, also whether its explanations
    are true (faithfulness, causal concept effects, intervention curves)."""
    from .experiment import load_experiment_task, load_run

    suites = None
    if suite is not None:
        from .evaluation import parse_suites

        suites = parse_suites(suite)
        if samples < 1:
            raise LucidError(f"--samples: expected a number of rows >= 1, found {samples}")
    model, record = load_run(run_dir)
    data = run_data(run_dir, record, config)
    task = load_experiment_task(data)
    show_progress_lines()
    with shown_progress("evaluate"):
        _evaluate(
            model, task, suites, run_dir, split, output_dir, samples, seed, cebab, data, black_box, as_json, pairs
        )


def _evaluate(
    model, task, suites, run_dir, split, output_dir, samples, seed, cebab, data, black_box, as_json, pairs
) -> None:
    if suites is not None:
        return _evaluate_suites(
            model,
            task,
            suites,
            run_dir,
            split,
            output_dir,
            samples,
            seed,
            cebab if cebab is not None else _cebab_folder(data),
            black_box,
            as_json,
            data,
            pairs,
        )
    metrics = model.evaluate(task.split(split))
    if as_json:
        emit_json(metrics)
    else:
        show_metrics(metrics, f"{split} ({metrics['n']} rows)")


def _recorded_accuracy(run_dir: Path, split: str) -> float:
    """The task accuracy on ``split`` that a run trained by ``lucidlm train`` recorded."""
    path = run_dir / RUN_FILE
    try:
        return float(json.loads(path.read_text())["metrics"][split]["task"]["accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        raise LucidError(
            f"{path}: expected a run.json with the task accuracy on {split!r} (as lucidlm train writes it)"
        ) from None


def run_data(run_dir: Path, record: dict | None, config: Optional[Path]) -> dict:
    """The data section a run is evaluated on: ``--config``'s, else the one the run records."""
    from .experiment import read_experiment

    if config is not None:
        return read_experiment(config).data
    if record is None:
        raise LucidError(f"{run_dir}: the run records no data set; name one with --config CONFIG.yaml")
    return record["experiment"]["data"]


def _cebab_folder(data: dict) -> Path | None:
    """The run's CEBaB folder, when its data set is the ``cebab`` preset read from a folder."""
    if data.get("source") != "cebab":
        return None
    if data.get("path"):
        return Path(data["path"])
    from .data.sources import DATA_ENV

    folder = Path(os.environ.get(DATA_ENV, "")) / "cebab"
    return folder if os.environ.get(DATA_ENV) and folder.is_dir() else None


def _evaluate_suites(
    model,
    task,
    suites,
    run_dir: Path,
    split: str,
    output_dir: Optional[Path],
    samples: int,
    seed: int,
    cebab: Optional[Path],
    black_box: Optional[Path],
    as_json: bool,
    data: dict,
    pairs: str = "originals",
) -> None:
    from rich.markdown import Markdown

    from .evaluation import run_suite, write_report
    from .experiment import automatic_concept_sources

    task.split(split)  # an unknown split is an error before any work
    black_box_accuracy = _recorded_accuracy(black_box, split) if black_box is not None else None
    statements, human = automatic_concept_sources(data, split) if "concepts" in suites else (None, {})
    results = run_suite(
        model,
        task,
        suites,
        split=split,
        samples=samples,
        seed=seed,
        cebab=cebab,
        black_box_accuracy=black_box_accuracy,
        statements=statements,
        human_concepts=human,
        pair_protocol=pairs,
    )
    options = [
        str(run_dir),
        "--suite",
        ",".join(suites),
        "--split",
        split,
        "--samples",
        str(samples),
        "--seed",
        str(seed),
    ]
    options += ["--cebab", str(cebab)] if cebab is not None else []
    options += ["--black-box", str(black_box)] if black_box is not None else []
    options += ["--pairs", pairs] if pairs != "originals" else []
    options += ["--output-dir", str(output_dir)] if output_dir is not None else []
    command = "lucidlm evaluate " + " ".join(shlex.quote(o) for o in options)
    written = write_report({run_dir.name: results}, output_dir or run_dir, command)
    if as_json:
        emit_json({"results": results, "written": {k: str(v) for k, v in written.items()}})
        return
    out.print(Markdown(written["markdown"].read_text()))
    out.print("wrote " + ", ".join(str(p) for p in written.values()))


@app.command()
@user_errors
def predict(
    run_dir: Path = typer.Argument(...),
    texts: Optional[list[str]] = typer.Argument(None, help="One or more texts (or --input FILE)."),
    as_json: bool = typer.Option(False, "--json"),
    input_file: Optional[Path] = typer.Option(
        None,
        "--input",
        help="Score a corpus: a CSV, JSONL or Parquet file, streamed "
        "in chunks; resumable; shared over the processes of torchrun / accelerate launch.",
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="With --input: the file to write (.csv, .jsonl or .parquet)."
    ),
    text_column: str = typer.Option("text", "--text-column", help="With --input: the column that holds the texts."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="With --input: texts per forward pass."),
    with_explanations: bool = typer.Option(False, "--explain", help="With --input: each row's explanation too (slow)."),
):
    """Predict the label and concepts of texts; for a concept model, what to check first. With
    --input, score a whole file: labels, probabilities and concept values per row."""
    from .models import ConceptModel, load_pretrained

    if input_file is not None:
        if texts or output is None:
            raise LucidError("predict --input FILE: give -o OUT (and no texts on the command line)")
        from .scoring import score_corpus

        show_progress_lines()
        model = load_pretrained(run_dir)
        with shown_progress("predict"):
            written = score_corpus(model, input_file, output, text_column, batch_size, explain=with_explanations)
        out.print(f"wrote [bold]{escape(str(written))}[/]")
        return
    if not texts:
        raise LucidError("predict: give one or more texts, or --input FILE -o OUT")
    model = load_pretrained(run_dir)
    predictions = model.predict(texts)
    suggestions = model.suggest_corrections(texts) if isinstance(model, ConceptModel) else [None] * len(texts)
    if as_json:
        emit_json([{**p.to_dict(), **({"suggestion": vars(s)} if s else {})} for p, s in zip(predictions, suggestions)])
        return
    for p, s in zip(predictions, suggestions):
        show_prediction(p)
        if s is not None:
            out.print(suggestion_line(s), highlight=False)


def suggestion_line(s) -> str:
    """The next question, as the page asks it."""
    if s.single_correction_changes_label:
        return (
            f"Check first: {s.concept}? A correction there changes the decision with probability "
            f"{s.change_probability:.1%} (by the model's own reading)."
        )
    if s.pair:
        pair = " and ".join(f"{name} = {value}" for name, value in s.pair.items())
        return f"No single correction would change the decision; setting {pair} would (to {s.pair_label})."
    return "No correction of one or two concepts would change the decision."


@app.command()
@user_errors
def intervene(
    run_dir: Path = typer.Argument(...),
    text: str = typer.Argument(...),
    set_: list[str] = typer.Option([], "--set", help="concept=value; repeat for several."),
    subnetwork: bool = typer.Option(False, "--subnetwork", help="Rewire the concept's subnetwork (SparseCBM)."),
    fraction: float = typer.Option(0.2, "--fraction", help="Share of active weights swapped per layer (--subnetwork)."),
    commit: bool = typer.Option(False, "--commit", help="Keep the rewired subnetwork: save it into RUN_DIR."),
    score: str = typer.Option(
        "saliency",
        "--score",
        help="Which weights to swap (--subnetwork): saliency |g⊙W| (the paper's) or taylor (signed first-order).",
    ),
    record: bool = typer.Option(
        False, "--record", help="Keep this correction in the run's corrections store (lucidlm learn reads it)."
    ),
    label: Optional[str] = typer.Option(None, "--label", help="With --record: the label you say is right."),
    by: Optional[str] = typer.Option(
        None, "--by", help="With --record: who corrects (default: this machine's user name)."
    ),
    corrections: Optional[str] = CORRECTIONS_OPTION,
    as_json: bool = typer.Option(False, "--json"),
):
    """Set concepts to given values and show the prediction before and after.

    With --subnetwork (SparseCBM), the concept's subnetwork is rewired toward the given value
    instead, for this text only unless --commit. With --record, the correction (and --label, the
    label you say is right) is kept in the run's corrections store."""
    from .intervene import ConceptValues, SubnetworkRewiring
    from .models import load_pretrained

    interventions = {}
    for item in set_:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise LucidError(f"--set {item!r}: expected concept=value, e.g. --set service=Negative")
        interventions[name.strip()] = value.strip()
    if commit and not subnetwork:
        raise LucidError("--commit applies to --subnetwork interventions")
    if (label is not None or by is not None) and not record:
        raise LucidError("--label and --by describe a recorded correction: add --record")
    if record:
        if subnetwork:
            raise LucidError("--record keeps concept-value corrections; a subnetwork rewiring is kept with --commit")
        return _record_correction(run_dir, text, interventions, label, by, corrections, as_json)
    if not interventions:
        raise LucidError("--set: give at least one concept=value, e.g. --set service=Negative")
    model, record = load_pretrained(run_dir), None
    if subnetwork:
        if len(interventions) != 1:
            raise LucidError(f"--subnetwork rewires one concept at a time; found {len(interventions)} --set options")
        ((name, value),) = interventions.items()
        correction = SubnetworkRewiring(name, value, fraction=fraction, score=score, commit=commit)
    else:
        correction = ConceptValues(interventions)
    result = model.intervene([text], correction)[0]
    if commit:
        from .experiment import commit_to_run

        record = commit_to_run(
            run_dir, model, {"subnetwork": name, "value": value, "fraction": fraction, "score": score, "text": text}
        )
    if as_json:
        emit_json(result.to_dict())
        return
    show_intervention(result)
    if subnetwork:
        out.print(
            f"{result.weights_changed} weights of {result.concept!r}'s subnetwork swapped"
            f"{'; committed to ' + str(run_dir) if result.committed else ' for this text only'}"
        )
    if record:
        out.print(
            f"run.json: {record['metrics_stale']}"
            if "metrics_stale" in record
            else "run.json: dev and test evaluated again after the change (earlier metrics kept under 'commits')"
        )


def _record_correction(
    run_dir: Path, text: str, values: dict, label: str | None, by: str | None, corrections: str | None, as_json: bool
) -> None:
    from .corrections import CorrectionStore
    from .corrections.learn import run_fingerprint
    from .corrections.recording import make_record
    from .models import load_pretrained

    store = CorrectionStore(corrections if corrections is not None else run_dir)
    author = acting_user(store, "corrector", by).name
    made, result = make_record(
        load_pretrained(run_dir), text, values, label, author, run_dir.name, run_fingerprint(run_dir)
    )
    stored = store.append(made)
    if as_json:
        emit_json({"record": stored.to_dict(), "result": result})
        return
    out.print(
        f"recorded correction {stored.id} by {escape(stored.author)} in {escape(store.safe_url)}: "
        f"label {escape(stored.label_before or '')} → {escape(stored.label_after or '')}"
        + (f" (you say {escape(label)})" if label else "")
    )


@app.command()
@user_errors
def explain(
    run_dir: Path = typer.Argument(...),
    text: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json"),
):
    """Explain a prediction with whatever the model's own forward pass offers (concepts,
    token scores, prototypes, subnetworks)."""
    from .models import load_pretrained

    model = load_pretrained(run_dir)
    explanation = model.explain(text)
    if as_json:
        emit_json(explanation.to_dict())
        return
    show_explanation(explanation)


@app.command()
@user_errors
def demo(
    run_dir: Path = typer.Argument(..., help="A saved run (what `lucidlm train` writes)."),
    split: str = typer.Option("test", "--split", help="The split the example comes from."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="Read the data from this config instead of the run's."
    ),
    as_json: bool = typer.Option(False, "--json"),
):
    """Show what a trained model offers on one example of its data. A concept model: a text where the
    concept its policy would ask about first is misread and correcting it moves the label to the
    gold one (an unedited review whose annotators agreed, where the data says), explained, then
    corrected, with the label before and after. Other families: a prediction and its explanation."""
    from .data import MISSING
    from .experiment import load_experiment_task, load_run
    from .intervene import choose_correction, showcase_corrections
    from .models import ConceptModel

    model, record = load_run(run_dir)
    rows = load_experiment_task(run_data(run_dir, record, config)).split(split)
    has_concepts = isinstance(model, ConceptModel)
    show_progress_lines()
    with shown_progress("demo"):
        showcase = showcase_corrections(model, rows)[0] if has_concepts else None
        i = showcase.row if has_concepts else min(range(min(len(rows), 200)), key=lambda j: (len(rows.texts[j]), j))
        text, spec = rows.texts[i], model.spec
        gold_label = float(rows.labels[i]) if spec.is_regression else spec.classes[int(rows.labels[i])]
        gold = {c.name: (c.values[int(v)] if v != MISSING else None) for c, v in zip(spec.concepts, rows.concepts[i])}
        explanation = model.explain(text)
        title, result = choose_correction(model, text, explanation, gold, showcase) if has_concepts else (None, None)
    if as_json:
        emit_json(
            {
                "row": int(i),
                "text": text,
                "gold_label": gold_label,
                "gold_concepts": gold,
                "explanation": explanation.to_dict(),
                "correction": title,
                "intervention": result.to_dict() if result else None,
            }
        )
        return
    out.print(f"[bold]{split} row {i}[/] (gold label {escape(str(gold_label))})")
    if result is None:
        show_explanation(explanation)
        out.print(f"a {model.family} model has no concepts to correct (concept models: configs/cebab-joint.yaml)")
        return
    show_explanation(replace(explanation, tokens=[]))  # the concepts; token scores: lucidlm explain
    show_intervention(result, f"{title}: ", f" (gold {gold_label})")


def show_intervention(result, lead: str = "", tail: str = "") -> None:
    """Before and after; the concepts the person set are marked "(set)" (plain text has no colour),
    and one sentence says whether the label changed."""
    table = Table(title=escape(result.text), title_justify="left")
    table.add_column("")
    table.add_column("before")
    table.add_column("after")
    table.add_row("label", _label_cell(result.before), _label_cell(result.after), style="bold")
    for name in result.before.concepts:
        b, a = result.before.concepts[name], result.after.concepts[name]
        was_set = name in result.interventions
        table.add_row(
            escape(name) + (" (set)" if was_set else ""),
            f"{b.value} ({b.probabilities[b.value]:.2f})",
            f"{a.value} ({a.probabilities[a.value]:.2f})",
            style="yellow" if was_set else None,
        )
    out.print(table)
    show_reading(result.before)
    setting = ", ".join(f"{k}={v}" for k, v in result.interventions.items())
    change = (
        f"changes the label from {result.before.label} to {result.after.label}"
        if result.label_changed
        else f"leaves the label at {result.after.label}"
    )
    out.print(escape(f"{lead}setting {setting} {change}{tail}"), highlight=False)


def _label_cell(p) -> str:
    return f"{p.label} ({p.probabilities[p.label]:.2f})" if p.probabilities else f"{p.label:.3f}"


def show_prediction(p) -> None:
    table = Table(title=escape(p.text), title_justify="left")
    table.add_column("")
    table.add_column("value")
    table.add_column("probability")
    table.add_row("label", str(p.label), f"{p.probabilities[p.label]:.3f}" if p.probabilities else "", style="bold")
    for name, c in p.concepts.items():
        table.add_row(name, c.value, f"{c.probabilities[c.value]:.3f}")
    out.print(table)
    show_reading(p)


def show_reading(p) -> None:
    """One line when the model read only the start of the text (its ``max_length``)."""
    if p.truncated:
        out.print(
            f"note: the model read the first {p.tokens_read} of this text's {p.tokens_total} tokens "
            "(model.max_length; train with a larger one to read more)"
        )


def show_explanation(e) -> None:
    """Each filled part of an ``Explanation`` as a table; empty parts are left out."""
    show_prediction(e.prediction)
    if e.concepts:
        table = Table(title="concepts", title_justify="left")
        for name in ("concept", "value", "probability", "contribution", "from value", "from text"):
            table.add_column(name, justify="left" if name in ("concept", "value") else "right")
        for c in e.concepts:
            parts = [f"{x:+.3f}" if x is not None else "–" for x in (c.from_value, c.from_text)]
            table.add_row(escape(c.concept), escape(c.value), f"{c.probability:.3f}", f"{c.contribution:+.3f}", *parts)
        out.print(table)
        out.print(CONTRIBUTION_MEANING, highlight=False)
        if e.concept_values_share is not None:
            out.print(
                f"The concept values account for {e.concept_values_share:.0%} of this decision; "
                "the text beside them for the rest.",
                highlight=False,
            )
    for attribution in e.tokens:
        # the writer's own words (a word's score: the sum of its tokens'), else the tokens
        words = (
            [(g.text, g.score) for g in attribution.groups]
            if attribution.groups
            else list(zip(attribution.tokens, attribution.scores))
        )
        table = Table(
            title=escape(f"token scores: {attribution.target} ({attribution.method}); + toward it, − against it"),
            title_justify="left",
        )
        table.add_column("word" if attribution.groups else "token")
        table.add_column("score", justify="right")
        table.add_column("")
        top = max((abs(s) for _, s in words), default=0.0) or 1.0
        for word, score in words:
            table.add_row(escape(word), f"{score:+.3f}", signed_bar(score, top))
        out.print(table)
        if attribution.unread:
            out.print(
                f"not read (past model.max_length): {escape(attribution.unread[:80])}"
                f"{'…' if len(attribution.unread) > 80 else ''}",
                highlight=False,
            )
    for match in e.prototypes:
        kind = f", class {match.prototype_class}" if match.prototype_class is not None else ""
        contributions = ", ".join(f"{k}: {v:+.3f}" for k, v in match.contributions.items())
        table = Table(
            title=escape(
                f"prototype {match.prototype}{kind}: similarity {match.similarity:.3f}; contributions {contributions}"
            ),
            title_justify="left",
        )
        table.add_column("nearest training example")
        table.add_column("label")
        table.add_column("distance", justify="right")
        table.add_column("most attended")
        for example in match.nearest_examples:
            text = example.text if example.text_pair is None else f"{example.text} ‖ {example.text_pair}"
            table.add_row(
                escape(text),
                escape(str(example.label)),
                f"{example.distance:.3f}",
                escape(", ".join(example.top_tokens)),
            )
        out.print(table)
    if e.subnetworks:
        show_subnetworks(e.subnetworks)


def signed_bar(score: float, top: float, width: int = 20) -> str:
    """A bar as long as |score| (relative to ``top``), led by its sign: a token that argues against
    the target must not look like one that argues for it, in colour or in plain text."""
    length = round(width * abs(score) / top)
    if length == 0:
        return ""
    return f"[green]+{'█' * length}[/]" if score > 0 else f"[red]−{'█' * length}[/]"


def show_subnetworks(stats: dict) -> None:
    """Per concept: density, weights owned alone, and Jaccard overlap with every other concept."""
    names = stats["concepts"]
    table = Table(
        title=f"subnetworks (weights kept by all concepts: {stats['shared_by_all']:.1%})", title_justify="left"
    )
    for column in ["concept", "density", "owned alone"] + [f"Jaccard {n}" for n in names]:
        table.add_column(escape(column), justify="left" if column == "concept" else "right")
    for k, name in enumerate(names):
        table.add_row(
            escape(name),
            f"{stats['density'][name]:.1%}",
            f"{stats['owned_by_one'][name]:.1%}",
            *(f"{x:.2f}" for x in stats["jaccard"][k]),
        )
    out.print(table)


def show_metrics(metrics: dict, title: str) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("")
    sections = [section for key, section in metrics.items() if isinstance(section, dict) and key != "calibration"]
    names = sorted({k for section in sections for k, v in section.items() if not isinstance(v, dict)})
    for name in names:
        table.add_column(name, justify="right")
    rows = [("task", metrics["task"])]
    if "concepts" in metrics:
        rows += [("concepts (all)", metrics["concepts"])]
        rows += [(f"  {k}", v) for k, v in metrics["concepts"]["per_concept"].items()]
        rows += [("task, gold concepts", metrics["task_gold_concepts"])]
        rows += [("task, all concepts forced", metrics["task_forced_concepts"])]
    for label, values in rows:
        table.add_row(label, *(f"{values[n]:.4f}" if n in values else "" for n in names))
    out.print(table)
    if "calibration" in metrics:
        show_reliability(metrics["calibration"], metrics["task"])


def show_reliability(calibration: dict, task: dict) -> None:
    """The reliability diagram as a table: per confidence bin, how often the model is right."""
    table = Table(
        title=f"reliability of the label's probabilities (temperature {calibration['temperature']:.3f}; "
        f"ECE {task['ece']:.3f}, NLL {task['nll']:.3f})",
        title_justify="left",
    )
    for name in ("confidence bin", "rows", "mean confidence", "accuracy", ""):
        table.add_column(name, justify="left" if name in ("confidence bin", "") else "right")
    for b in calibration["bins"]:
        gap = b["accuracy"] - b["confidence"]
        table.add_row(
            f"{b['lower']:.2f}–{b['upper']:.2f}",
            str(b["n"]),
            f"{b['confidence']:.3f}",
            f"{b['accuracy']:.3f}",
            f"{'over' if gap < 0 else 'under'}confident by {abs(gap):.3f}" if abs(gap) >= 0.005 else "",
        )
    out.print(table)


@app.command()
@user_errors
def serve(
    run_dir: Path = typer.Argument(..., help="A saved run."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on; 0.0.0.0 opens it to the network."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    queue_size: int = typer.Option(
        64, "--queue-size", min=1, help="Requests that may wait for the model; more get 503."
    ),
    max_batch: int = typer.Option(
        32, "--max-batch", min=1, help="Concurrent predictions gathered into one forward pass."
    ),
    max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", min=0, help="How long a batch waits for more predictions."),
    explain_cache: int = typer.Option(
        256, "--explain-cache", min=0, help="Explanations kept (least recently used go)."
    ),
    device: str = typer.Option(
        "auto", "--device", help="Where the model runs: auto (the GPU when there is one), cpu, cuda, cuda:N."
    ),
    corrections: Optional[str] = CORRECTIONS_OPTION,
    pool: Optional[Path] = typer.Option(
        None,
        "--pool",
        help="Texts to review (CSV, TSV, JSON, JSONL or Parquet with a "
        "'text' column): the page hands them out, most worth asking first.",
    ),
    policy: str = typer.Option(
        "expected_change",
        "--policy",
        help="The review queue's order: expected_change, label_change, uncertainty or random.",
    ),
):
    """Serve a web page and a JSON API over a run: type a text, see the label, concepts, tokens and
    prototypes, change a concept and compare before and after; with users' tokens, record corrections
    and review a queue of texts."""
    from .web.serve import check_exposure, listening_socket, load_app, run_server, serving_store
    from .web.worker import ServingLimits

    limits = ServingLimits(
        queue_size=queue_size, max_batch=max_batch, max_wait=max_wait_ms / 1000, explain_cache=explain_cache
    )
    Run(run_dir).check_saved()
    store = serving_store(run_dir, corrections, create=pool is not None)
    check_exposure(host, store)
    sock = listening_socket(host, port)  # a taken port is one line, before any "serving"
    try:
        web_app = load_app(run_dir, limits, device, pool=pool, policy=policy, store=store)
    except BaseException:
        sock.close()
        raise
    out.print(f"serving {escape(str(run_dir))} on [bold]http://{host}:{port}[/] (Ctrl+C stops)")
    run_server(web_app, host, port, sock)


@app.command()
@user_errors
def report(
    run_dir: Path = typer.Argument(..., help="A saved run."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="The HTML file to write (default: RUN_DIR/report.html)."
    ),
    split: str = typer.Option("test", "--split", help="The split the confusion matrices and examples come from."),
    limit: Optional[int] = typer.Option(
        None, "--limit", help="Predict on at most this many rows (a fixed random sample)."
    ),
    examples: int = typer.Option(3, "--examples", help="Worked examples, each explained and corrected."),
):
    """Write one self-contained HTML report of a run (opens with no network): metrics, confusion
    matrices, subnetworks or prototypes, evaluation suite results, worked examples."""
    from .web.report import write_report

    show_progress_lines()
    with shown_progress("report"):
        written = write_report(run_dir, output or run_dir / "report.html", split=split, limit=limit, examples=examples)
    out.print(f"wrote [bold]{escape(str(written))}[/]")


@app.command()
@user_errors
def export(
    run_dir: Path = typer.Argument(..., help="A saved run."),
    output: Path = typer.Option(..., "--output", "-o", help="The folder to write the exported run to."),
    merge: bool = typer.Option(
        False,
        "--merge",
        help="Merge the run's adapter into its base backbone (W + BA) and save the "
        "whole backbone: a self-contained run that needs no base to load.",
    ),
):
    """Write a run elsewhere; with --merge, self-contained: an adapter (or frozen-backbone) run
    holds only what trained and loads its base backbone from where it was trained."""
    import shutil

    from .models import load_pretrained

    if output.resolve() == run_dir.resolve():
        raise LucidError(f"{output}: the run itself; export to another folder")
    model = load_pretrained(run_dir)
    if merge:
        model.merge_adapter()
    model.save_pretrained(output)
    for record in RECORDS:  # what the run measured
        if (run_dir / record).is_file():
            shutil.copy2(run_dir / record, output / record)
    out.print(f"wrote [bold]{escape(str(output))}[/]" + (" (merged: loads without its base)" if merge else ""))


concepts_app = typer.Typer(no_args_is_help=True, help="Concept sets for concept models without concept labels.")
app.add_typer(concepts_app, name="concepts")


@concepts_app.command("propose")
@user_errors
def propose_concepts(
    config: Path = typer.Argument(
        ..., help="Experiment YAML whose data (classes, training texts) the statements are for."
    ),
    model: str = typer.Option(..., "--model", help="A LiteLLM chat model: ollama/llama3.1, openai/gpt-4o-mini, ..."),
    output: Path = typer.Option(..., "--output", "-o", help="The concept file to write (YAML, {class: [statements]})."),
    class_name: list[str] = typer.Option(
        [], "--class-name", help="CLASS=NAME, e.g. 0=negative: what to call a class in the prompt."
    ),
    per_class: int = typer.Option(10, "--per-class", min=1, help="Statements asked for per class."),
    examples: int = typer.Option(5, "--examples", min=0, help="Training texts of each class shown to the model."),
    api_base: Optional[str] = typer.Option(
        None, "--api-base", help="The model server's URL (e.g. http://127.0.0.1:11434 for Ollama)."
    ),
    seed: int = typer.Option(0, "--seed"),
):
    """Ask a chat model for concept statements per class; write them for a person to review, then
    name the file in data.automatic_concepts.statements."""
    from .data.propose_concepts import propose_statements, write_concept_file
    from .experiment import load_experiment_task, read_experiment

    names = {}
    for item in class_name:
        if "=" not in item:
            raise LucidError(f"--class-name: expected CLASS=NAME, found {item!r}")
        key, value = item.split("=", 1)
        names[key.strip()] = value.strip()
    data = read_experiment(config).data
    task = load_experiment_task({k: v for k, v in data.items() if k != "automatic_concepts"})
    unknown = [c for c in names if c not in task.spec.classes]
    if unknown:
        raise LucidError(f"--class-name: unknown class {unknown[0]!r}; the classes are {list(task.spec.classes)}")
    proposed = propose_statements(task, model, names, per_class, examples, seed, api_base)
    header = (
        f"Concept statements proposed by {model} for {config.name} ({per_class} asked per class). Review and edit\n"
        "them, then name this file in data.automatic_concepts.statements."
    )
    written = write_concept_file(proposed, output, header)
    for label, statements in proposed.items():
        out.print(f"[bold]{escape(names.get(label, label))}[/]: {len(statements)} statements")
    out.print(f"wrote [bold]{escape(str(written))}[/]")


if __name__ == "__main__":
    app()


# ---- corrections: the store, its people, learning from it ------------------------------------------
corrections_app = typer.Typer(no_args_is_help=True, help="The corrections people recorded (append-only).")
users_app = typer.Typer(no_args_is_help=True, help="People who may record corrections, with tokens and roles.")
app.add_typer(corrections_app, name="corrections")
app.add_typer(users_app, name="users")
STORE_ARGUMENT = typer.Argument(..., help="A run folder (its corrections.sqlite), a SQLite file or a SQLAlchemy URL.")


def _store(location: str):
    from .corrections import CorrectionStore

    return CorrectionStore(location)


@corrections_app.command("list")
@user_errors
def corrections_list(
    store: str = STORE_ARGUMENT,
    standing: bool = typer.Option(False, "--standing", help="Only corrections not retracted."),
    author: Optional[str] = typer.Option(None, "--author"),
    as_json: bool = typer.Option(False, "--json"),
):
    """The records, in the order they were stored."""
    opened = _store(store)
    records = opened.standing() if standing else opened.records(author=author)
    records = [r for r in records if author is None or r.author == author]
    if as_json:
        emit_json([r.to_dict() for r in records])
        return
    table = Table("id", "kind", "when", "who", "text", "set", "label before → after", "says")
    for r in records:
        table.add_row(
            str(r.id),
            r.kind + (f" of {r.retracts}" if r.retracts else ""),
            r.created_at[:19],
            escape(r.author),
            escape(r.text[:50] + ("…" if len(r.text) > 50 else "")),
            escape(", ".join(f"{k}={v}" for k, v in r.set_values.items())),
            escape(f"{r.label_before} → {r.label_after}" if r.kind == "correction" else ""),
            escape(r.gold_label or ""),
        )
    out.print(table)
    out.print(f"{len(records)} record(s) in {escape(opened.safe_url)}")


@corrections_app.command("show")
@user_errors
def corrections_show(store: str = STORE_ARGUMENT, record_id: int = typer.Argument(...)):
    """One record, whole, as JSON."""
    emit_json(_store(store).get(record_id).to_dict())


@corrections_app.command("export")
@user_errors
def corrections_export(
    store: str = STORE_ARGUMENT,
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        help="A .csv or .jsonl file, or a folder for a Hugging Face dataset (datasets.load_from_disk reads it).",
    ),
    standing: bool = typer.Option(False, "--standing", help="Only corrections not retracted."),
):
    """Write the records to CSV, JSONL or a Hugging Face dataset."""
    count = _store(store).export(output, standing_only=standing)
    out.print(f"wrote {count} record(s) to [bold]{escape(str(output))}[/]")


@corrections_app.command("retract")
@user_errors
def corrections_retract(
    store: str = STORE_ARGUMENT,
    record_id: int = typer.Argument(...),
    reason: str = typer.Option("", "--reason"),
    by: Optional[str] = typer.Option(None, "--by", help="Who retracts (default: this machine's user name)."),
):
    """Retract a record: a new record says so; nothing is deleted or rewritten. With users in the store,
    as the holder of $LUCIDLM_TOKEN: one's own records as a corrector, anyone's as an admin."""
    opened = _store(store)
    user = acting_user(opened, "corrector", by)
    original = opened.get(record_id)
    if original.author != user.name and not user.may("admin"):
        raise LucidError(f"record {record_id} is {original.author}'s: retracting another's record needs an admin")
    made = opened.retract(record_id, user.name, reason)
    out.print(f"record {made.id} retracts record {record_id}")


@users_app.command("add")
@user_errors
def users_add(
    name: str = typer.Argument(...),
    role: str = typer.Option("corrector", "--role", help="viewer, corrector or admin."),
    store: str = typer.Option(..., "--store", help="The run folder (or store URL) the server will use."),
):
    """Add a user and print their token, once: it is kept only as a hash."""
    from .corrections import add_user

    token = add_user(_store(store), name, role)
    err.print(
        f"added {escape(name)} ({role}). Their token, shown this once (send it as 'Authorization: Bearer <token>'):"
    )
    sys.stdout.write(token + "\n")


@users_app.command("list")
@user_errors
def users_list(store: str = typer.Option(..., "--store"), as_json: bool = typer.Option(False, "--json")):
    """The users and their roles (never their tokens)."""
    users = _store(store).users()
    if as_json:
        emit_json(users)
        return
    table = Table("name", "role", "added")
    for user in users:
        table.add_row(escape(user["name"]), user["role"], user["created_at"][:19])
    out.print(table)


@users_app.command("remove")
@user_errors
def users_remove(name: str = typer.Argument(...), store: str = typer.Option(..., "--store")):
    """Remove a user: their token stops working; their records stay."""
    _store(store).remove_user(name)
    out.print(f"removed {escape(name)}")


@app.command()
@user_errors
def learn(
    run_dir: Path = typer.Argument(..., help="The run the corrections were made on."),
    output: Path = typer.Option(..., "--output", "-o", help="The new run's folder."),
    corrections: Optional[str] = CORRECTIONS_OPTION,
    seed: Optional[int] = typer.Option(None, "--seed", help="Training seed (default: the run's)."),
    epochs: Optional[int] = typer.Option(
        None, "--epochs", min=1, help="Epochs of the continuation (default: learn's)."
    ),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate", help="The backbone's peak learning rate."),
    head_learning_rate: Optional[float] = typer.Option(
        None, "--head-learning-rate", help="The heads' peak learning rate."
    ),
    as_json: bool = typer.Option(False, "--json"),
):
    """Fine-tune a new run from RUN_DIR on its training data plus the standing corrections made on it
    (or on a run it was learned from), with its own settings; the new run records its lineage and
    its parent's metrics beside its own. With users in the store, it needs an admin's token in
    $LUCIDLM_TOKEN."""
    from .corrections import CorrectionStore
    from .corrections.learn import learn as learn_run

    store = CorrectionStore(corrections if corrections is not None else run_dir)
    acting_user(store, "admin")
    show_progress_lines()
    changes = {
        k: v
        for k, v in (("epochs", epochs), ("learning_rate", learning_rate), ("head_learning_rate", head_learning_rate))
        if v is not None
    }
    _, record = learn_run(run_dir, output, store, seed=seed, training=changes)
    if as_json:
        emit_json(record)
        return
    lineage = record["lineage"]
    out.print(
        f"learned [bold]{escape(str(output))}[/] from {lineage['count']} correction(s) of {lineage['texts']} text(s) "
        f"({lineage['concept_labels']} concept values, {lineage['labels']} labels)"
    )
    table = Table("split", "parent accuracy", "new accuracy")
    for split, metrics in record["metrics"].items():
        parent = (lineage.get("parent_metrics") or {}).get(split, {}).get("task", {})
        table.add_row(split, _percent(parent.get("accuracy")), _percent(metrics["task"].get("accuracy")))
    out.print(table)


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"
