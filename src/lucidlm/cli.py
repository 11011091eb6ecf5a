"""The command line: ``lucidlm train | evaluate | predict | intervene``.

Tables and progress bars for people, ``--json`` for programs. A user error prints one line
(``error: ...``) and exits with status 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import LucidError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
out = Console()
err = Console(stderr=True)
STATE = {"debug": False}


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
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
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
):
    """Train a model from a config, choose it on dev, evaluate on dev and test, save the run."""
    from .experiment import read_experiment, run_experiment

    experiment = read_experiment(config, output_dir)
    if experiment.output_dir.exists() and not experiment.output_dir.is_dir():
        raise LucidError(f"{experiment.output_dir}: exists and is not a folder")
    experiment.training.progress = experiment.training.progress and not as_json and err.is_terminal
    _, metrics = run_experiment(experiment)
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
    config: Optional[Path] = typer.Option(None, "--config", help="Read the data from this config instead of the run's."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Evaluate a saved run on a split of its data."""
    from .experiment import load_experiment_task, load_run, read_experiment

    model, record = load_run(run_dir)
    if config is not None:
        data = read_experiment(config).data
    elif record is not None:
        data = record["experiment"]["data"]
    else:
        raise LucidError(f"{run_dir}: the run records no data set; name one with --config CONFIG.yaml")
    task = load_experiment_task(data)
    metrics = model.evaluate(task.split(split))
    if as_json:
        emit_json(metrics)
    else:
        show_metrics(metrics, f"{split} ({metrics['n']} rows)")


@app.command()
@user_errors
def predict(
    run_dir: Path = typer.Argument(...),
    texts: list[str] = typer.Argument(..., help="One or more texts."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Predict the label and concepts of texts."""
    from .models import load_pretrained

    model = load_pretrained(run_dir)
    predictions = model.predict(texts)
    if as_json:
        emit_json([p.to_dict() for p in predictions])
        return
    for p in predictions:
        show_prediction(p)


@app.command()
@user_errors
def intervene(
    run_dir: Path = typer.Argument(...),
    text: str = typer.Argument(...),
    set_: list[str] = typer.Option(..., "--set", help="concept=value; repeat for several."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Set concepts to given values and show the prediction before and after."""
    from .models import load_pretrained

    interventions = {}
    for item in set_:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise LucidError(f"--set {item!r}: expected concept=value, e.g. --set service=Negative")
        interventions[name.strip()] = value.strip()
    model = load_pretrained(run_dir)
    if not hasattr(model, "intervene"):
        raise LucidError(f"{run_dir}: a {model.family} model has no concept interventions")
    result = model.intervene([text], interventions)[0]
    if as_json:
        emit_json(result.to_dict())
        return
    table = Table(title=text, title_justify="left")
    table.add_column("")
    table.add_column("before")
    table.add_column("after")
    table.add_row("label", _label_cell(result.before), _label_cell(result.after), style="bold")
    for name in result.before.concepts:
        b, a = result.before.concepts[name], result.after.concepts[name]
        table.add_row(name, f"{b.value} ({b.probabilities[b.value]:.2f})", f"{a.value} ({a.probabilities[a.value]:.2f})",
                      style="yellow" if name in interventions else None)
    out.print(table)


def _label_cell(p) -> str:
    return f"{p.label} ({p.probabilities[p.label]:.2f})" if p.probabilities else f"{p.label:.3f}"


def show_prediction(p) -> None:
    table = Table(title=p.text, title_justify="left")
    table.add_column("")
    table.add_column("value")
    table.add_column("probability")
    table.add_row("label", str(p.label), f"{p.probabilities[p.label]:.3f}" if p.probabilities else "", style="bold")
    for name, c in p.concepts.items():
        table.add_row(name, c.value, f"{c.probabilities[c.value]:.3f}")
    out.print(table)


def show_metrics(metrics: dict, title: str) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("")
    names = sorted({k for section in metrics.values() if isinstance(section, dict) for k, v in section.items() if not isinstance(v, dict)})
    for name in names:
        table.add_column(name, justify="right")
    rows = [("task", metrics["task"])]
    if "concepts" in metrics:
        rows += [("concepts (all)", metrics["concepts"])]
        rows += [(f"  {k}", v) for k, v in metrics["concepts"]["per_concept"].items()]
        rows += [("task, gold concepts", metrics["task_gold_concepts"])]
    for label, values in rows:
        table.add_row(label, *(f"{values[n]:.4f}" if n in values else "" for n in names))
    out.print(table)


if __name__ == "__main__":
    app()
