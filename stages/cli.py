"""The `cnnlab` command line: thin typer commands that parse options and call a stage.

Stage modules are imported inside each command so that `cnnlab --help` (and every stage
that does not train or predict) starts without importing TensorFlow.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from stages.config import DEFAULT_PARAMS_PATH, Params, load_params
from stages.errors import USER_ERROR_EXIT_CODE, CnnlabError

app = typer.Typer(
    help="Train and evaluate convolutional image classifiers as a reproducible DVC pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = typer.Option(DEFAULT_PARAMS_PATH, "--params", help="params.yaml to read.")
PreparedOption = typer.Option(Path("data/prepared"), help="Folder written by `prepare`.")
AugmentedOption = typer.Option(Path("data/augmented"), help="Folder written by `augment`.")
ModelOption = typer.Option(Path("models/model.keras"), help="Trained model (.keras).")
SummaryOption = typer.Option(Path("models/summary.json"), help="Training summary (JSON).")
MetricsOption = typer.Option(Path("reports/metrics.json"), help="Test metrics (JSON).")
EvaluationOption = typer.Option(Path("reports/evaluation"), help="Folder of evaluation tables.")
LiveOption = typer.Option(Path("reports/train"), help="DVCLive folder of per-epoch metrics.")
CheckpointsOption = typer.Option(Path("models/checkpoints"), help="Training state to resume from.")


def _params(path: str) -> Params:
    return load_params(path)


@app.command()
def check(params: str = ParamsOption) -> None:
    """Validate params.yaml without running anything."""
    load_params(params)
    typer.echo(f"{params}: OK")


@app.command()
def prepare(params: str = ParamsOption, output: Path = PreparedOption) -> None:
    """Load the dataset, scale to [0, 1], split train/val/test, write arrays and meta.json."""
    from stages.prepare import prepare as run

    config = _params(params)
    meta = run(config.prepare, config.seed, output)
    typer.echo(f"prepared {meta['dataset']}: {meta['splits']} -> {output}")


@app.command()
def augment(params: str = ParamsOption, prepared: Path = PreparedOption,
            output: Path = AugmentedOption) -> None:
    """Choose the training set and augmentation policy that `train` uses."""
    from stages.augment import augment as run

    config = _params(params)
    policy = run(config.augment, config.seed, prepared, output)
    typer.echo(f"augmentation mode {policy['mode']} -> {output}")


@app.command()
def train(params: str = ParamsOption, prepared: Path = PreparedOption,
          augmented: Path = AugmentedOption, model: Path = ModelOption,
          summary: Path = SummaryOption, live_dir: Path = LiveOption,
          checkpoints: Path = CheckpointsOption) -> None:
    """Train the model, keep the best epoch, log per-epoch metrics; resume after an interruption."""
    config = _params(params)  # validate before importing TensorFlow
    from stages.train import train as run

    try:
        result = run(config, prepared, augmented, model, summary, live_dir, checkpoints)
    except KeyboardInterrupt:
        typer.echo("cnnlab: interrupted; run the same command again to resume from the last "
                   "completed epoch", err=True)
        sys.exit(130)
    resumed = f" (resumed after epoch {result['resumed_from_epoch']})" if result["resumed_from_epoch"] else ""
    typer.echo(f"best epoch {result['best_epoch']}/{result['epochs_run']}{resumed}: "
               f"{result['monitor']} {result['best_value']:.4f} -> {model}")


@app.command(name="summary")
def summary_command(params: str = ParamsOption, prepared: Path = PreparedOption,
                    explain: bool = typer.Option(False, "--explain", help="Show how each output "
                                                 "shape and parameter count follow from the formulas.")) -> None:
    """The model's layer table for the current params (shapes from meta.json), without training."""
    config = _params(params)
    from rich.console import Console

    from stages.summary import model_summary, summary_tables

    Console().print(*summary_tables(model_summary(config, prepared), explain))


@app.command()
def evaluate(params: str = ParamsOption, model: Path = ModelOption,
             prepared: Path = PreparedOption, metrics: Path = MetricsOption,
             output: Path = EvaluationOption) -> None:
    """Predict the test set; write metrics, per-class table and confusion matrix."""
    config = _params(params)
    from stages.evaluate import evaluate as run

    result = run(config.evaluate, model, prepared, metrics, output)
    typer.echo(f"test accuracy {result['accuracy']:.4f}, macro F1 {result['f1_macro']:.4f} -> {metrics}")


@app.command()
def report(params: str = ParamsOption, prepared: Path = PreparedOption,
           summary: Path = SummaryOption, metrics: Path = MetricsOption,
           evaluation: Path = EvaluationOption, live_dir: Path = LiveOption,
           output: Path = typer.Option(Path("reports/report.md"), help="Markdown report to write."),
           ) -> None:
    """Write the Markdown report and its figures (next to it, in figures/)."""
    from stages.report import ReportInputs, report as run

    config = _params(params)
    inputs = ReportInputs(prepared, summary, metrics, evaluation, live_dir)
    run(config.report, inputs, output)
    typer.echo(f"report -> {output}")


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except CnnlabError as error:
        typer.echo(f"cnnlab: error: {error}", err=True)
        sys.exit(USER_ERROR_EXIT_CODE)
