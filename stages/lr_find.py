"""lr-find: the learning-rate range test (Smith, 2017; fast.ai's `lr_find`) on the current
params and the prepared (and augmented) training set.

From a freshly initialized model, one training step per learning rate, the rate growing
exponentially from `min_rate` to `max_rate` over `steps` steps; the loss of each step is
smoothed (an exponential moving average with bias correction) and the test stops early once
the smoothed loss exceeds `divergence` times its minimum. The suggested rate is a tenth of
the rate at the smoothed minimum (where the loss still falls fast, safely below divergence);
the steepest descent is recorded too.

Writes into `output_dir` (replaced atomically; by default reports/lr_find, which no stage
reads or writes): never the model, the pipeline's reports, or the resume checkpoints.
    lr_find.json   suggested rate, rule, steepest-descent rate, and every step's rate and losses
    lr_find.png    the smoothed loss against the rate (log scale), the suggestion marked
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from stages import plots
from stages.artifacts import META_FILE, read_meta, read_policy, read_training_set
from stages.config import Params
from stages.errors import CnnlabError
from stages.io import atomic_dir, write_json
from stages.models import build_model, check_architecture
from stages.optimization import choose_loss, class_weights, sample_weighting
from stages.runtime import resolve_precision, seed_everything
from stages.train import TRAINING, batch_reader, compile_for_phase, dtype_policy, training_dataset

SMOOTHING = 0.98          # weight of the running average (fast.ai's)
SKIP_START = 5            # the first steps' smoothed losses are too noisy to call a minimum or divergence
SUGGESTION_FACTOR = 10.0  # suggested rate = rate at the smoothed minimum / this


def rates(min_rate: float, max_rate: float, steps: int) -> np.ndarray:
    """`steps` rates growing exponentially from `min_rate` to `max_rate`."""
    return min_rate * (max_rate / min_rate) ** (np.arange(steps) / max(steps - 1, 1))


def smooth(losses: list[float]) -> np.ndarray:
    """Exponential moving average of the losses, bias-corrected (the first values are not pulled to 0)."""
    average, smoothed = 0.0, []
    for step, loss in enumerate(losses, start=1):
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        smoothed.append(average / (1 - SMOOTHING ** step))
    return np.array(smoothed)


def diverged(smoothed: np.ndarray, divergence: float) -> bool:
    last = smoothed[-1]
    return not math.isfinite(last) or (len(smoothed) > SKIP_START and last > divergence * smoothed.min())


def suggest(tried: np.ndarray, smoothed: np.ndarray) -> dict:
    """The suggested rate (minimum / 10) and the steepest descent before the minimum."""
    if len(smoothed) <= SKIP_START:
        raise CnnlabError(f"lr-find diverged within {len(smoothed)} steps, before a minimum could be found; "
                          "lower --min-rate")
    window = slice(SKIP_START, len(smoothed))
    lowest = SKIP_START + int(np.argmin(smoothed[window]))
    slopes = np.gradient(smoothed, np.log(tried))
    steepest = SKIP_START + int(np.argmin(slopes[SKIP_START:lowest + 1])) if lowest > SKIP_START else lowest
    return {"suggested_learning_rate": float(tried[lowest] / SUGGESTION_FACTOR),
            "rule": f"rate at the smoothed loss minimum / {SUGGESTION_FACTOR:g}",
            "minimum_loss_rate": float(tried[lowest]), "steepest_descent_rate": float(tried[steepest])}


def lr_find(params: Params, prepared_dir: str | Path, augmented_dir: str | Path, output_dir: str | Path,
            steps: int = 200, min_rate: float = 1e-7, max_rate: float = 10.0, divergence: float = 4.0) -> dict:
    """Run the range test; return the record written to lr_find.json."""
    if not 0 < min_rate < max_rate:
        raise CnnlabError(f"lr-find: --min-rate ({min_rate:g}) must be positive and below --max-rate "
                          f"({max_rate:g}); pass e.g. --min-rate 1e-7 --max-rate 10")
    prepared_dir = Path(prepared_dir)
    meta = read_meta(prepared_dir / META_FILE)
    check_architecture(params.model, meta["image_shape"])
    policy = read_policy(augmented_dir)
    train_x, train_y = read_training_set(prepared_dir, augmented_dir, meta, policy)
    loss = choose_loss(params.train, meta["num_classes"])
    weights = class_weights(params.train, train_y, meta["class_names"])
    batch_size = params.train.batch_size
    steps_per_epoch = math.ceil(len(train_y) / batch_size)
    tried = rates(min_rate, max_rate, steps)

    from stages.transforms import online_augmentation  # TensorFlow: imported when it runs

    seed_everything(params.seed)
    with dtype_policy(resolve_precision(params.train.precision)):
        model = build_model(params.model, tuple(meta["image_shape"]), meta["num_classes"], meta.get("normalization"))
        compile_for_phase(model, params, TRAINING, steps_per_epoch, loss, rate=float(min_rate))
        dataset = training_dataset(
            train_x, train_y, batch_size, params.seed, range(math.ceil(steps / steps_per_epoch)),
            batch_reader(train_x, train_y, loss, meta["num_classes"]), online_augmentation(policy),
            None if weights is None else sample_weighting(weights, loss))
        losses: list[float] = []
        for rate, batch in zip(tried, dataset, strict=False):
            model.optimizer.learning_rate.assign(rate)
            losses.append(float(model.train_on_batch(*batch, return_dict=True)["loss"]))
            if diverged(smooth(losses), divergence):
                break
    smoothed = smooth(losses)
    record = {**suggest(tried[:len(losses)], smoothed), "steps": len(losses), "stopped_early": len(losses) < steps,
              "min_rate": min_rate, "max_rate": max_rate, "batch_size": batch_size,
              "curve": [{"learning_rate": float(rate), "loss": loss, "smoothed_loss": float(value)}
                        for rate, loss, value in zip(tried, losses, smoothed)]}
    with atomic_dir(output_dir) as folder:
        plots.lr_find_curve(tried[:len(losses)], np.array(losses), smoothed, record, folder / "lr_find.png",
                            params.report.figure_dpi)
        write_json(folder / "lr_find.json", record)
    return record
