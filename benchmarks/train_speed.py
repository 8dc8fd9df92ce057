"""Training speed: `cnnlab train` vs two plain Keras baselines, side by side in one run.

    plain Keras (course script)   model.fit on float64 NumPy arrays, as the course does
    plain Keras (tf.data f32)     the fast plain loop: float32 arrays in an in-memory tf.data pipeline
    cnnlab train                  the train stage, with its checkpoints, DVCLive logs and determinism

All three train the course's MNIST CNN (examples/mnist_cnn.yaml: 166,986 parameters on
28x28x1) with Adam, batch 128, one-hot labels, for the same epochs on the same prepared
arrays (Fashion-MNIST when cnnlab can prepare it, scikit-learn's digits otherwise), each in
a fresh interpreter, in turn within each round (the order rotates from round to round, so
that a neighbour's load spreads over all three). Images/second counts training images over
the time from the start of training to the end of the last epoch (validation included).

    .venv/bin/python benchmarks/train_speed.py --precision float32 [--epochs 3] [--rounds 3] [--prepared DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def cnnlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True)


def prepare_data(work: Path) -> Path:
    """data/prepared for Fashion-MNIST if cnnlab can load it here, else for digits."""
    for dataset in ("fashion_mnist", "digits"):
        (work / "params.yaml").write_text(yaml.safe_dump({"prepare": {"dataset": dataset}}))
        result = cnnlab("prepare", "--output", "prepared", cwd=work)
        if result.returncode == 0:
            return work / "prepared"
        print(f"({dataset} not available: {result.stderr.strip().splitlines()[-1]})")
    raise SystemExit("could not prepare any dataset")


COURSE, FAST, CNNLAB = "plain Keras (course script)", "plain Keras (tf.data f32)", "cnnlab train"


def run_plain(prepared: Path, epochs: int, pipeline: str) -> dict:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plain_keras.py"), str(prepared),
                             str(epochs), pipeline], env=ENV, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_cnnlab(prepared: Path, work: Path, epochs: int, precision: str | None) -> dict:
    example = yaml.safe_load((ROOT / "examples" / "mnist_cnn.yaml").read_text())
    params = {"seed": example["seed"], "model": example["model"], "train": {**example["train"], "epochs": epochs}}
    if precision:
        params["train"]["precision"] = precision
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    if not (work / "augmented").is_dir():
        cnnlab("augment", "--prepared", str(prepared), "--output", "augmented", cwd=work)
    for stale in ("checkpoints", "model.keras"):  # start from scratch, never resume
        subprocess.run(["rm", "-rf", str(work / stale)], check=True)
    result = cnnlab("train", "--prepared", str(prepared), "--augmented", "augmented", "--model", "model.keras",
                    "--summary", "summary.json", "--live-dir", "live", "--checkpoints", "checkpoints", cwd=work)
    if result.returncode != 0:
        raise SystemExit(f"cnnlab train failed:\n{result.stderr}")
    summary = json.loads((work / "summary.json").read_text())
    state = json.loads((work / "checkpoints" / "state.json").read_text())
    history = state["history"]
    return {"seconds": state["seconds"], "images": summary["train_images"] * summary["epochs_run"],
            "params": summary["total_params"], "val_accuracy": history["val_accuracy"][-1],
            "precision": summary["precision"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="alternate plain and cnnlab this many times")
    parser.add_argument("--prepared", type=Path, help="an existing data/prepared folder to use")
    parser.add_argument("--precision", default="auto",
                        help="train.precision for cnnlab (default: auto, i.e. bfloat16 where native)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-") as temp:
        work = Path(temp)
        prepared = args.prepared.resolve() if args.prepared else prepare_data(work)
        meta = json.loads((prepared / "meta.json").read_text())
        print(f"data: {meta['dataset']}, {meta['splits']['train']:,} training images of "
              f"{'x'.join(map(str, meta['image_shape']))}, {args.epochs} epochs, batch 128")
        contenders = {COURSE: lambda: run_plain(prepared, args.epochs, "course"),
                      FAST: lambda: run_plain(prepared, args.epochs, "tfdata"),
                      CNNLAB: lambda: run_cnnlab(prepared, work, args.epochs, args.precision)}
        totals = {name: [0.0, 0] for name in contenders}
        names = list(contenders)
        for round_number in range(args.rounds):
            for name in names[round_number % 3:] + names[:round_number % 3]:
                result = contenders[name]()
                totals[name][0] += result["seconds"]
                totals[name][1] += result["images"]
                print(f"round {round_number + 1}: {name:28s} {result['images'] / result['seconds']:8,.0f} images/s "
                      f"({result['seconds']:.1f} s, {result['params']:,} params, "
                      f"last val_accuracy {result['val_accuracy']:.4f}"
                      + (f", precision {result['precision']})" if "precision" in result else ")"), flush=True)
        speeds = {name: images / seconds for name, (seconds, images) in totals.items()}
        for name, speed in speeds.items():
            print(f"{name:28s} {speed:8,.0f} images/s")
        print(f"ratio cnnlab / course script: {speeds[CNNLAB] / speeds[COURSE]:.2f}x")
        print(f"ratio cnnlab / plain tf.data float32: {speeds[CNNLAB] / speeds[FAST]:.2f}x")


if __name__ == "__main__":
    main()
