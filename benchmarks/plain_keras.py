"""The course's plain Keras training script, as the baseline of benchmarks/train_speed.py.

Exactly the course's way: the whole training set as NumPy float64 arrays (`x / 255` makes
float64), one-hot labels from `to_categorical`, a Sequential model, `model.fit(...,
batch_size=128, validation_data=...)` with Keras's defaults. It reads the same prepared
arrays that `cnnlab train` reads and prints one JSON line with its timing.

    python benchmarks/plain_keras.py PREPARED_DIR EPOCHS
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402


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


def main(prepared_dir: str, epochs: int) -> None:
    meta = json.load(open(os.path.join(prepared_dir, "meta.json")))
    num_classes = meta["num_classes"]
    # The course divides uint8 pixels by 255, which gives float64 arrays: so do we.
    x_train = np.load(os.path.join(prepared_dir, "train_x.npy")).astype(np.float64)
    x_val = np.load(os.path.join(prepared_dir, "val_x.npy")).astype(np.float64)
    y_train = keras.utils.to_categorical(np.load(os.path.join(prepared_dir, "train_y.npy")), num_classes)
    y_val = keras.utils.to_categorical(np.load(os.path.join(prepared_dir, "val_y.npy")), num_classes)

    model = create_model(x_train.shape[1:], num_classes)
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    started = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=128, epochs=epochs,
                        validation_data=(x_val, y_val), verbose=2)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "seconds": seconds, "images": len(x_train) * epochs, "params": model.count_params(),
        "val_accuracy": history.history["val_accuracy"][-1],
    }))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
