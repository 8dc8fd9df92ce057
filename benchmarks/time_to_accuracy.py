"""Time to accuracy: how long a shipped recipe trains before it reaches a test accuracy.

Prepares the recipe's dataset (Fashion-MNIST: validation carved from the 60,000 training
images, test = the official 10,000), runs the augment stage, then the train stage in this
process with one extra callback that scores the official test images after every epoch
(with the recipe's test-time flip, as the evaluate stage does). The clock is the train
stage's training loop (checkpoints, DVCLive and validation included; the test scoring
excluded). Prints the per-epoch curve, the seconds and epochs to the target, and the
test accuracy of the model the stage keeps (its best epoch by validation accuracy).

    .venv/bin/python benchmarks/time_to_accuracy.py [--params examples/fashion_mnist_93.yaml]
        [--precision float32] [--target 0.93] [--prepared DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def cnnlab(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "stages", *args], cwd=cwd, env=ENV, check=True,
                   stdout=subprocess.DEVNULL)


def test_scorer(images: np.ndarray, labels: np.ndarray, batch_size: int, flip: bool):
    """A Keras callback: test accuracy after each epoch, on a clock that leaves its own time out."""
    import keras

    from stages.evaluate import predict_probabilities

    class TestScorer(keras.callbacks.Callback):
        curve: list = []

        def on_train_begin(self, logs=None):
            self.started, self.paused = time.perf_counter(), 0.0

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.started - self.paused
            scoring = time.perf_counter()
            predicted = predict_probabilities(self.model, images, batch_size, flip).argmax(axis=1)
            accuracy = float(np.mean(predicted == labels))
            self.paused += time.perf_counter() - scoring
            self.last_epoch_end = time.perf_counter()
            self.curve.append((epoch + 1, seconds, float(logs["val_accuracy"]), accuracy))
            print(f"epoch {epoch + 1:3d}  {seconds:7.1f} s  val_accuracy {logs['val_accuracy']:.4f}  "
                  f"test accuracy {accuracy:.4f}", flush=True)

    return TestScorer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "examples" / "fashion_mnist_93.yaml")
    parser.add_argument("--precision", default="float32", help="train.precision (float32, auto, ...)")
    parser.add_argument("--target", type=float, default=0.93)
    parser.add_argument("--prepared", type=Path, help="an existing data/prepared folder made with these params")
    args = parser.parse_args()

    from stages.config import load_params, read_yaml
    from stages.evaluate import evaluate

    raw = read_yaml(args.params.read_text(encoding="utf-8"), str(args.params))
    raw.setdefault("train", {})["precision"] = args.precision
    with tempfile.TemporaryDirectory(prefix="cnnlab-tta-") as temp:
        work = Path(temp)
        import yaml

        (work / "params.yaml").write_text(yaml.safe_dump(raw))
        params = load_params(work / "params.yaml")
        prepared = args.prepared.resolve() if args.prepared else work / "prepared"
        if not args.prepared:
            cnnlab("prepare", "--output", "prepared", cwd=work)
        cnnlab("augment", "--prepared", str(prepared), "--output", "augmented", cwd=work)

        from stages.train import train

        test_x, test_y = np.load(prepared / "test_x.npy"), np.load(prepared / "test_y.npy")
        scorer = test_scorer(test_x, test_y, params.evaluate.batch_size, params.evaluate.test_time_flip)
        started = time.perf_counter()
        summary = train(params, prepared, work / "augmented", work / "model.keras", work / "summary.json",
                        work / "live", work / "checkpoints", callbacks=(scorer,))
        returned = time.perf_counter()
        stage_seconds = returned - started - scorer.paused
        before, after = scorer.started - started, returned - scorer.last_epoch_end
        metrics = evaluate(params.evaluate, work / "model.keras", prepared, work / "metrics.json", work / "evaluation")

    reached = next(((epoch, seconds) for epoch, seconds, _, accuracy in scorer.curve if accuracy >= args.target), None)
    print(f"recipe {args.params.name}: {summary['total_params']:,} parameters, precision {summary['precision']}, "
          f"{summary['train_images']:,} training images, batch {params.train.batch_size}, "
          f"{summary['epochs_run']} epochs")
    print(f"training loop {scorer.curve[-1][1]:.1f} s; train stage {stage_seconds:.1f} s: {before:.1f} s before "
          f"the first epoch (data, model, compiling) and {after:.1f} s after the last (best epoch, model.keras, logs)")
    if reached:
        print(f"test accuracy {args.target:.1%} reached after epoch {reached[0]}, {reached[1]:.1f} s of training")
    else:
        print(f"test accuracy {args.target:.1%} not reached (best {max(row[3] for row in scorer.curve):.4f})")
    print(f"kept model (best epoch {summary['best_epoch']} by {summary['monitor']}): test accuracy "
          f"{metrics['accuracy']:.4f}" + (" with the test-time flip" if params.evaluate.test_time_flip else ""))


if __name__ == "__main__":
    main()
