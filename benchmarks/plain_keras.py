"""The plain Keras baselines of benchmarks/train_speed.py, on the prepared arrays `cnnlab train` reads.

    course   the course's script exactly: the whole training set as NumPy float64 arrays (`x / 255`
             makes float64), one-hot labels from `to_categorical`, `model.fit(x, y, batch_size=128,
             validation_data=...)` with Keras's defaults
    tfdata   the fast plain loop: float32 arrays in memory, an in-memory `tf.data` pipeline
             (shuffle with a seed, batch, prefetch) for training and validation

Both build the course's Sequential MNIST CNN and print one JSON line with their timing, taken
as cnnlab's is: from the start of training to the end of the last epoch (validation included).

    python benchmarks/plain_keras.py PREPARED_DIR EPOCHS [course|tfdata]
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

BATCH_SIZE, SEED = 128, 42


def create_model(input_shape, num_classes):
    """The course's MNIST CNN (166,986 parameters on 28x28x1)."""
    model = keras.models.Sequential()
    model.add(keras.Input(shape=input_shape))
    model.add(keras.layers.Conv2D(32, (3, 3), activation="relu"))
    model.add(keras.layers.MaxPooling2D(pool_size=(2, 2)))
    model.add(keras.layers.Conv2D(64, (3, 3), activation="relu"))
    model.add(keras.layers.MaxPooling2D(pool_size=(2, 2), padding="same"))
    model.add(keras.layers.Flatten())
    model.add(keras.layers.Dense(64, activation="relu"))
    model.add(keras.layers.Dense(num_classes, activation="softmax"))
    return model


class Stopwatch(keras.callbacks.Callback):
    """Seconds from the start of training to the end of the last epoch."""

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.started


def load(prepared_dir: str, split: str, num_classes: int, dtype):
    images = np.load(os.path.join(prepared_dir, f"{split}_x.npy")).astype(dtype)
    labels = keras.utils.to_categorical(np.load(os.path.join(prepared_dir, f"{split}_y.npy")), num_classes)
    return images, labels


def main(prepared_dir: str, epochs: int, pipeline: str = "course") -> None:
    meta = json.load(open(os.path.join(prepared_dir, "meta.json")))
    num_classes = meta["num_classes"]
    keras.utils.set_random_seed(SEED)
    # The course divides uint8 pixels by 255, which gives float64 arrays: so does its baseline.
    dtype = np.float64 if pipeline == "course" else np.float32
    x_train, y_train = load(prepared_dir, "train", num_classes, dtype)
    x_val, y_val = load(prepared_dir, "val", num_classes, dtype)

    model = create_model(x_train.shape[1:], num_classes)
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    stopwatch = Stopwatch()
    if pipeline == "course":
        history = model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=epochs,
                            validation_data=(x_val, y_val), verbose=2, callbacks=[stopwatch])
    else:
        train = (tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(len(x_train), seed=SEED)
                 .batch(BATCH_SIZE).prefetch(tf.data.AUTOTUNE))
        val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(BATCH_SIZE).prefetch(tf.data.AUTOTUNE)
        history = model.fit(train, epochs=epochs, validation_data=val, verbose=2, callbacks=[stopwatch])
    print(json.dumps({
        "seconds": stopwatch.seconds, "images": len(x_train) * epochs, "params": model.count_params(),
        "val_accuracy": history.history["val_accuracy"][-1],
    }))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:4])
