"""Throughput of the online augmentation pipeline against plain Keras preprocessing layers.

Times full passes over the training set of a prepared folder (no model: the input
pipeline alone, the part augmentation slows down), with TensorFlow's op determinism on,
as `cnnlab train` runs it:

    none          train's pipeline without augmentation
    cnnlab        train's pipeline with `augment.mode=online` (stateless ops, parallel map)
    keras-layers  the keras-io way: RandomRotation + RandomTranslation + RandomZoom in a map

The policy is the default one (rotation 10 degrees, shifts 0.1, zoom 0.1) in all three.

    .venv/bin/cnnlab prepare
    .venv/bin/python benchmarks/augment_pipeline.py --prepared data/prepared --batch-size 128
"""

from __future__ import annotations

import argparse
import time

from stages.augment import TRANSFORM_KEYS
from stages.config import AugmentParams, TrainParams
from stages.io import load_array
from stages.optimization import choose_loss
from stages.runtime import import_tensorflow, seed_everything
from stages.train import batch_reader, training_dataset
from stages.transforms import build_online_augmenter


def keras_layers_augmentation(params: AugmentParams, seed: int):
    """The reference: Keras 3 preprocessing layers mapped over the batches, as in the keras-io examples."""
    import keras

    tf = import_tensorflow()
    layers = keras.Sequential([
        keras.layers.RandomRotation(params.rotation / 360.0, fill_mode="constant", seed=seed),
        keras.layers.RandomTranslation(params.height_shift, params.width_shift, fill_mode="constant", seed=seed),
        keras.layers.RandomZoom(params.zoom, fill_mode="constant", seed=seed),
    ])

    def augment_dataset(dataset, first_step: int = 0):  # same signature as cnnlab's augmenter
        return dataset.map(lambda images, labels: (layers(images, training=True), labels),
                           num_parallel_calls=tf.data.AUTOTUNE)

    return augment_dataset


def seconds_per_pass(dataset, passes: int) -> float:
    """The fastest of `passes` full iterations (the first one also builds the graph)."""
    best = float("inf")
    for _ in range(passes):
        started = time.perf_counter()
        for _batch in dataset:
            pass
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    images, labels = load_array(f"{args.prepared}/train_x.npy"), load_array(f"{args.prepared}/train_y.npy")
    channels = images.shape[-1]
    seed_everything(args.seed)  # op determinism on, as in `cnnlab train`
    params = AugmentParams(mode="online")
    policy = {"seed": args.seed, "transforms": {key: getattr(params, key) for key in TRANSFORM_KEYS},
              "value_range": {"low": [0.0] * channels, "high": [1.0] * channels}}
    variants = {
        "none": None,
        "cnnlab": build_online_augmenter(policy),
        "keras-layers": keras_layers_augmentation(params, args.seed),
    }
    num_classes = int(labels.max()) + 1
    read_batch = batch_reader(images, labels, choose_loss(TrainParams(), num_classes), num_classes)
    timings = {}
    for name, augmentation in variants.items():  # one epoch per pass, shuffled as `cnnlab train` does
        dataset = training_dataset(images, labels, args.batch_size, args.seed, range(1), read_batch, augmentation)
        timings[name] = seconds_per_pass(dataset, args.passes)
    print(f"{len(labels)} images {images.shape[1:]}, batch {args.batch_size}, best of {args.passes} passes")
    for name, seconds in timings.items():
        print(f"{name:>13}: {seconds:7.2f} s per pass, {len(labels) / seconds:9.0f} images/s")
    ratio = timings["keras-layers"] / timings["cnnlab"]
    print(f"cnnlab online augmentation is {ratio:.2f}x the speed of the Keras-layers reference")
    print(f"augmentation adds {timings['cnnlab'] - timings['none']:.2f} s per pass to the input pipeline")


if __name__ == "__main__":
    main()
