"""The `cnnlab` command line: thin typer commands that parse options and call a stage.

Stage modules are imported inside each command so that `cnnlab --help` (and every stage
that does not train or predict) starts without importing TensorFlow.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from functools import partial
from importlib.metadata import version as installed_version
from pathlib import Path

import typer
from typer.core import TyperCommand, TyperGroup

from stages.config import DEFAULT_PARAMS_PATH, load_params
from stages.errors import (
    ENVIRONMENT_EXIT_CODE, USER_ERROR_EXIT_CODE, CnnlabError, EnvironmentFailure, environment_failure,
)


class PlainHelp:
    """Help that names what a value is (PATH, INTEGER, TEXT), click's convention, instead of
    typer's Python types (<list[Path]>, <str>); flags (--md, --help) show no value at all."""

    PLAIN_NAMES = {"str": "text", "int": "integer", "int range": "integer", "float": "number",
                   "float range": "number"}

    def format_help(self, ctx, formatter) -> None:
        for param in self.get_params(ctx):
            name = param.display_type(ctx).strip("<>").removeprefix("list[").removesuffix("]")
            value = (None if getattr(param, "is_flag", False) else
                     param.metavar or self.PLAIN_NAMES.get(name, name).upper())
            param.display_type_rich = lambda ctx, value=value: value
        super().format_help(ctx, formatter)


class Group(PlainHelp, TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        """The pipeline stages first (in pipeline order), then the tools."""
        names = super().list_commands(ctx)
        return sorted(names, key=lambda name: self.commands[name].rich_help_panel != STAGES_PANEL)


class Command(PlainHelp, TyperCommand):
    pass


app = typer.Typer(
    cls=Group,
    help="Train and evaluate convolutional image classifiers as a reproducible DVC pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# `cnnlab --help` lists the commands in two panels: the stages dvc.yaml runs, and the rest.
STAGES_PANEL = "Pipeline stages"
stage = partial(app.command, cls=Command, rich_help_panel=STAGES_PANEL)
tool = partial(app.command, cls=Command, rich_help_panel="Tools")


def show_version(requested: bool) -> None:
    if requested:
        typer.echo(f"cnnlab {installed_version('cnnlab')}")
        raise typer.Exit()


@app.callback()
def options(version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                         help="Show the installed version and exit.")) -> None:
    """Train and evaluate convolutional image classifiers as a reproducible DVC pipeline."""

ParamsOption = typer.Option(DEFAULT_PARAMS_PATH, "--params", metavar="PATH", help="params.yaml to read.")
PreparedOption = typer.Option(Path("data/prepared"), help="Folder written by `prepare`.")
AugmentedOption = typer.Option(Path("data/augmented"), help="Folder written by `augment`.")
ModelOption = typer.Option(Path("models/model.keras"), help="Trained model (.keras).")
SummaryOption = typer.Option(Path("models/summary.json"), help="Training summary (JSON).")
MetricsOption = typer.Option(Path("reports/metrics.json"), help="Test metrics (JSON).")
EvaluationOption = typer.Option(Path("reports/evaluation"), help="Folder of evaluation tables.")
LiveOption = typer.Option(Path("reports/train"), help="DVCLive folder of per-epoch metrics.")
CheckpointsOption = typer.Option(Path(".cnnlab/checkpoints"),
                                 help="Training state to resume from (git- and DVC-ignored scratch).")


@tool()
def check(params: str = ParamsOption) -> None:
    """Validate params.yaml without running anything."""
    load_params(params)
    typer.echo(f"{params}: OK")


@stage()
def prepare(params: str = ParamsOption, output: Path = PreparedOption) -> None:
    """Load the dataset, split train/val/test, normalize, write arrays and meta.json."""
    from stages.prepare import prepare as run
    from stages.prepare import health_summary, skipped_warnings

    config = load_params(params)
    meta = run(config.prepare, config.seed, output)
    for warning in skipped_warnings(meta):
        typer.echo(f"cnnlab: warning: {warning}", err=True)
    sizes = " / ".join(f"{count} {split}" for split, count in meta["splits"].items())
    shape = "x".join(map(str, meta["image_shape"]))
    typer.echo(f"prepared {meta['dataset']} ({meta['found_at']}): {shape} images, {sizes} -> {output}")
    typer.echo(health_summary(meta))


@tool()
def datasets(params: str = ParamsOption) -> None:
    """List the dataset sources, whether each is available offline now, and where it lies."""
    from rich.console import Console

    from stages.datasets import survey, survey_table

    config = load_params(params)
    console = Console()
    console.width = min(console.width, 100) if console.is_terminal else 100  # also when redirected
    console.print(survey_table(survey(config.prepare), config.prepare.dataset))


@stage()
def augment(params: str = ParamsOption, prepared: Path = PreparedOption,
            output: Path = AugmentedOption) -> None:
    """Choose the training set and augmentation policy that `train` uses."""
    from stages.augment import augment as run

    config = load_params(params)
    policy = run(config.augment, config.seed, prepared, output)
    images = f", {policy['train_images']} training images" if "train_images" in policy else ""
    typer.echo(f"augmentation mode {policy['mode']}{images} -> {output}")


@stage()
def train(params: str = ParamsOption, prepared: Path = PreparedOption,
          augmented: Path = AugmentedOption, model: Path = ModelOption,
          summary: Path = SummaryOption, live_dir: Path = LiveOption,
          checkpoints: Path = CheckpointsOption,
          ray: str | None = typer.Option(None, "--ray", metavar="ADDRESS", help="With train.workers > 1: the "
                                         "Ray cluster (HOST:PORT of its head; default: $RAY_ADDRESS).")
          ) -> None:
    """Train the model, keep the best epoch, log per-epoch metrics; resume after an interruption."""
    config = load_params(params)  # validate before importing TensorFlow
    from stages.train import train as run

    try:
        result = run(config, prepared, augmented, model, summary, live_dir, checkpoints, ray_address=ray)
    except KeyboardInterrupt:
        typer.echo("cnnlab: interrupted; run the same command again to resume from the last "
                   "completed epoch", err=True)
        sys.exit(130)
    resumed = f" (resumed after epoch {result['resumed_from_epoch']})" if result["resumed_from_epoch"] else ""
    typer.echo(f"best epoch {result['best_epoch']}/{result['epochs_run']}{resumed}: "
               f"{result['monitor']} {result['best_value']:.4f}, {result['training_seconds']:.0f} s "
               f"of training -> {model}")


@tool(name="summary")
def summary_command(params: str = ParamsOption, prepared: Path = PreparedOption,
                    explain: bool = typer.Option(False, "--explain", help="Show how each output "
                                                 "shape and parameter count follow from the formulas.")) -> None:
    """The model's layer table for the current params (shapes from meta.json), without training."""
    config = load_params(params)
    from rich.console import Console

    from stages.summary import model_summary, summary_tables

    Console().print(*summary_tables(model_summary(config, prepared), explain))


@stage()
def evaluate(params: str = ParamsOption, model: Path = ModelOption,
             prepared: Path = PreparedOption, metrics: Path = MetricsOption,
             output: Path = EvaluationOption) -> None:
    """Predict the test set; write metrics, per-class table, confusion matrix and figures."""
    config = load_params(params)
    from stages.evaluate import evaluate as run

    result = run(config.evaluate, model, prepared, metrics, output, config.report.figure_dpi)
    typer.echo(f"test accuracy {result['accuracy']:.4f}, macro F1 {result['f1_macro']:.4f} -> {metrics}")


@stage()
def report(params: str = ParamsOption, prepared: Path = PreparedOption,
           augmented: Path = AugmentedOption,
           summary: Path = SummaryOption, metrics: Path = MetricsOption,
           evaluation: Path = EvaluationOption, live_dir: Path = LiveOption,
           output: Path = typer.Option(Path("reports/report.md"), help="Markdown report to write."),
           ) -> None:
    """Write the Markdown report and its figures (next to it, in figures/)."""
    from stages.report import ReportInputs, report as run

    config = load_params(params)
    inputs = ReportInputs(prepared, summary, metrics, evaluation, live_dir, augmented)
    run(config.report, inputs, output)
    typer.echo(f"report -> {output}")


@tool()
def compare(
    rev: str = typer.Option("main", help="Git revision (branch, tag, commit) to compare the workspace with."),
    experiments: bool = typer.Option(False, "--experiments", help="Compare DVC experiments instead (dvc exp show)."),
    md: bool = typer.Option(False, "--md", help="Markdown, ready for a pull-request comment."),
    sort_by: str = typer.Option("accuracy", help="Metric that orders the experiments table."),
    plot: Path = typer.Option(Path("reports/compare/experiments.png"),
                              help="Overlay plot of the experiments' validation curves."),
    output: Path = typer.Option(None, help="Write the text to this file instead of printing it."),
    params: str = ParamsOption, metrics: Path = MetricsOption, summary: Path = SummaryOption,
    evaluation: Path = EvaluationOption, live_dir: Path = LiveOption,
) -> None:
    """What changed, and is it real? Params, metrics and per-class F1 against a git revision
    (judged by McNemar's test on the per-image predictions), or across experiments."""
    from stages.compare import ComparePaths, compare_experiments, compare_revision
    from stages.io import write_text

    paths = ComparePaths(Path(params), metrics, evaluation / "per_class.csv", evaluation / "confusion.csv",
                         summary, live_dir)
    text = (compare_experiments(paths, sort_by, md, plot) if experiments
            else compare_revision(rev, paths, md))
    write_text(output, text) if output else typer.echo(text, nl=False)


@tool()
def sweep(
    set_param: list[str] = typer.Option(..., "--set-param", "-S", metavar="KEY=VALUES",
                                        help="A grid axis in DVC's syntax: train.optimizer=sgd,adam (repeat "
                                             "for more axes; every combination runs); with --budget also "
                                             "interval(0.1,1) or tag(log, interval(1e-4,1e-1))."),
    budget: int | None = typer.Option(None, min=1, help="Run this many trials drawn from the search space "
                                                        "(the whole grid when it is no larger)."),
    seed: int = typer.Option(0, help="With --budget: the seed of the draw (same seed, same trials)."),
    name: str | None = typer.Option(None, help="Experiments are named NAME-1, NAME-2, ... (default: "
                                               "sweep-<random>)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Without --ray: trials at a time on this machine."),
    ray: str | None = typer.Option(None, "--ray", metavar="ADDRESS",
                                   help="Run the trials on this Ray cluster (auto, or HOST:PORT of its head)."),
    cpus_per_trial: int = typer.Option(1, min=1, help="With --ray: cores (and TensorFlow threads) per trial."),
    retries: int = typer.Option(3, min=0, help="With --ray: retries of a trial whose worker or node dies."),
    git_remote: str = typer.Option("origin", help="With --ray: the git remote the workers clone and push to."),
) -> None:
    """Run a grid of DVC experiments, here through DVC's queue or on a Ray cluster; then
    `dvc exp show` or `cnnlab compare --experiments` lists them."""
    from secrets import token_hex

    from stages.sweep import choose_trials, sweep_local, sweep_ray

    name = name or f"sweep-{token_hex(3)}"
    chosen = choose_trials(set_param, budget, seed)  # validates the search space before anything runs
    trials = (sweep_ray(Path.cwd(), chosen, name, ray, cpus_per_trial, retries, git_remote) if ray
              else sweep_local(Path.cwd(), chosen, name, jobs))
    for trial in trials:
        if trial.resumed_from_epoch:
            typer.echo(f"{trial.name}: retried, resumed after epoch {trial.resumed_from_epoch}")
    typer.echo(f"{len(trials)} experiments ({', '.join(trial.name for trial in trials)}); "
               "compare them: cnnlab compare --experiments")


@tool(name="lr-find")
def lr_find(params: str = ParamsOption, prepared: Path = PreparedOption, augmented: Path = AugmentedOption,
            output: Path = typer.Option(Path("reports/lr_find"), help="Folder for lr_find.png and lr_find.json "
                                        "(no stage reads or writes it)."),
            steps: int = typer.Option(200, min=10, help="Training steps, one per learning rate, at most."),
            min_rate: float = typer.Option(1e-7, help="First learning rate."),
            max_rate: float = typer.Option(10.0, help="Last learning rate."),
            ) -> None:
    """Learning-rate range test on the current params and prepared data: plot and a suggested
    train.learning_rate. Touches no model, report or checkpoint of the pipeline."""
    config = load_params(params)
    from stages.lr_find import lr_find as run

    record = run(config, prepared, augmented, output, steps, min_rate, max_rate)
    stopped = " (stopped early: the loss diverged)" if record["stopped_early"] else ""
    typer.echo(f"suggested train.learning_rate {record['suggested_learning_rate']:.2g} after "
               f"{record['steps']} steps{stopped} -> {output}")


MetaOption = typer.Option(Path("data/prepared/meta.json"),
                          help="meta.json written by `prepare` (image size, colour mode, normalization).")


@tool()
def predict(paths: list[Path] = typer.Argument(..., help="Image files and folders of images."),
            model: Path = ModelOption, meta: Path = MetaOption,
            output: Path | None = typer.Option(None, help="Also write the predictions to this CSV."),
            top_k: int = typer.Option(3, min=1, help="How many most likely classes to list."),
            batch_size: int = typer.Option(256, min=1, help="Images decoded and classified at a time."),
            ) -> None:
    """Classify images with the trained model. Exit 1 if some files were unreadable (skipped)."""
    from rich.console import Console

    from stages.predict import PARTIAL_FAILURE_EXIT_CODE, predict as run, results_table

    result = run(paths, model, meta, batch_size, top_k, output)
    console = Console()  # piped or redirected: full rows, not folded to 80 columns
    console.print(results_table(result), width=None if console.is_terminal else 10_000)
    for _, reason in result.failures:
        typer.echo(f"cnnlab: skipped unreadable file {reason}", err=True)
    if result.failures:
        typer.echo(f"cnnlab: {len(result.failures)} of {len(result.failures) + len(result.table)} "
                   "files could not be read", err=True)
        raise typer.Exit(PARTIAL_FAILURE_EXIT_CODE)


@tool()
def export(model: Path = ModelOption, meta: Path = MetaOption,
           export_format: str = typer.Option("saved_model", "--format", help="saved_model, onnx or tflite."),
           int8: bool = typer.Option(False, "--int8", help="tflite: 8-bit post-training quantization "
                                                           "calibrated on training images."),
           output: Path | None = typer.Option(None, help="Where to write (default: models/model.export, "
                                                          "models/model.onnx, models/model[.int8].tflite)."),
           atol: float = typer.Option(1e-5, min=0.0, help="Float exports: largest allowed difference from "
                                                         "model.keras's probabilities on the test images."),
           min_agreement: float = typer.Option(0.995, min=0.0, max=1.0,
                                               help="int8 exports: smallest allowed share of test images "
                                                    "classified as model.keras classifies them."),
           ) -> None:
    """Write the model as a SavedModel, ONNX or TFLite file that takes raw pixels, checked first
    against model.keras on the test images."""
    from stages.export import ExportOptions, export as run

    options = ExportOptions(export_format, int8, atol, min_agreement)
    options.check()
    output = output or Path(options.default_output)
    record = run(model, meta, output, options)
    check = record["check"]
    typer.echo(f"{record['format']}{' int8' if int8 else ''} ({record['size_bytes']:,} bytes; raw pixels "
               f"{'x'.join(map(str, record['input']['shape'][1:]))} -> {len(record['class_names'])} classes) "
               f"-> {output}; check on {check['test_images']} test images: class agreement "
               f"{check['class_agreement']:.4f}, max probability difference {check['max_probability_difference']:.2g}, "
               f"accuracy {check['export_accuracy']:.4f} (model.keras {check['keras_accuracy']:.4f})")


@tool()
def init(directory: Path = typer.Argument(..., help="New (or empty) folder for the project."),
         data: Path | None = typer.Option(None, help="Folder of images, one sub-folder per class "
                                                     "(default: the bundled digits)."),
         ) -> None:
    """Create a new cnnlab project: git + DVC, dvc.yaml, a commented params.yaml, README."""
    from stages.scaffold import init as run

    created = run(directory, data)
    typer.echo(f"created {created['project_dir']}; next: cd {directory} && cnnlab check && dvc repro")


def fail(error: Exception, code: int) -> None:
    """One line on stderr, whatever the message holds, and the exit code."""
    typer.echo(f"cnnlab: error: {' '.join(str(error).split())}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def interpreter_teardown_skipped():
    """Around a command: once it has exited (SystemExit with a code) and the atexit handlers
    have run, the process ends at once, without the interpreter's teardown, which frees every
    object one by one and runs the libraries' destructors only for the operating system to free
    the memory anyway: 0.8-1.8 s after TensorFlow (its import alone leaves 0.8 s of it), 0.2-0.5 s
    after pandas and matplotlib (docs/performance.md). By then Python has joined the other
    threads and run the atexit handlers registered since the command started (TensorFlow's,
    DVCLive's, Ray's), and the stages have closed their files; logging, whose handler was
    registered before (at its import), is shut down here, and stdout and stderr are flushed.
    A traceback (a bug) or a signal keeps the usual exit."""
    exit_code: list[int] = []

    def exit_now() -> None:
        if not exit_code:
            return
        logging.shutdown()  # flushes and closes every logging handler, as the skipped teardown would
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):  # a closed pipe: Python reports it as usual
            return
        os._exit(exit_code[0])

    atexit.register(exit_now)  # registered first, so it runs last (atexit runs handlers in reverse)
    try:
        yield
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            exit_code.append(exit.code or 0)
        raise


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2; the machine's
    refusals (disk full, permission denied, read-only) one line and exit code 1; bugs keep
    their traceback."""
    warnings = logging.StreamHandler()  # the stages' logger.warning lines, e.g. a damaged resume state
    warnings.setFormatter(logging.Formatter("cnnlab: warning: %(message)s"))
    logging.getLogger("stages").addHandler(warnings)
    logging.getLogger("stages").propagate = False
    with interpreter_teardown_skipped():
        try:
            app(prog_name="cnnlab")  # also under `python -m stages`: usage lines, completion scripts
        except CnnlabError as error:
            fail(error, USER_ERROR_EXIT_CODE)
        except EnvironmentFailure as error:
            fail(error, ENVIRONMENT_EXIT_CODE)
        except OSError as error:
            if (failure := environment_failure(error)) is None:
                raise
            fail(failure, ENVIRONMENT_EXIT_CODE)
