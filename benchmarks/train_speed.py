"""Training speed: the course's plain Keras script vs `cnnlab train`, side by side in one run.

Both train the course's MNIST CNN (examples/mnist_cnn.yaml: 166,986 parameters on 28x28x1)
with Adam, batch 128, one-hot labels, for the same epochs on the same prepared arrays
(Fashion-MNIST when cnnlab can prepare it, scikit-learn's digits otherwise), each in a
fresh interpreter. Images/second counts training images over the time of the training
loop (validation included) in both.

    .venv/bin/python benchmarks/train_speed.py [--epochs 3] [--rounds 1] [--prepared DIR]
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


def run_plain(prepared: Path, epochs: int) -> dict:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plain_keras.py"), str(prepared),
                             str(epochs)], env=ENV, capture_output=True, text=True, check=True)
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
    history = json.loads((work / "checkpoints" / "state.json").read_text())["history"]
    return {"seconds": summary["training_seconds"], "images": summary["train_images"] * summary["epochs_run"],
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
        totals = {"plain Keras (course script)": [0.0, 0], "cnnlab train": [0.0, 0]}
        for round_number in range(args.rounds):
            plain = run_plain(prepared, args.epochs)
            ours = run_cnnlab(prepared, work, args.epochs, args.precision)
            for name, result in (("plain Keras (course script)", plain), ("cnnlab train", ours)):
                totals[name][0] += result["seconds"]
                totals[name][1] += result["images"]
                print(f"round {round_number + 1}: {name:28s} {result['images'] / result['seconds']:8,.0f} images/s "
                      f"({result['seconds']:.1f} s, {result['params']:,} params, "
                      f"last val_accuracy {result['val_accuracy']:.4f}"
                      + (f", precision {result['precision']})" if "precision" in result else ")"))
        speeds = {name: images / seconds for name, (seconds, images) in totals.items()}
        for name, speed in speeds.items():
            print(f"{name:28s} {speed:8,.0f} images/s")
        print(f"ratio cnnlab / plain: {speeds['cnnlab train'] / speeds['plain Keras (course script)']:.2f}x")


if __name__ == "__main__":
    main()
