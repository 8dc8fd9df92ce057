"""TensorFlow, imported on demand.

TensorFlow takes seconds to import, so only the stages that train or predict call
`import_tensorflow()`; `cnnlab --help`, `prepare` and `report` never do.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow():
    """Import TensorFlow quietly and return the module."""
    # Hide TF's C++ start-up chatter (CUDA probing, CPU feature notes) unless asked for.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return tf


def seed_everything(seed: int) -> None:
    """Make initialization, dropout and shuffling repeatable: same seed, same result on CPU."""
    tf = import_tensorflow()
    import keras

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def keras_verbosity() -> int:
    """A progress bar on a terminal, one line per epoch in CI logs and under dvc."""
    return 1 if sys.stdout.isatty() else 2
