"""The original Keras network on TensorFlow, timed the same way as bench/throughput.py.

    pip install -e ".[bench]"        # tensorflow-cpu (large; only needed for this script)
    python bench/keras_reference.py [--batch-size 32] [--steps 4] [--repeats 3]

Builds the Sequential model of the original write-up (6x6 conv 64, BN, pool, 3x3 conv 16, BN,
pool, dense 64/16 with BN and dropout, softmax), compiles it with Adam(1e-3) and
categorical cross-entropy, and measures training images/s with ``model.fit`` on one fixed
in-memory batch (fed with ``ds.repeat()`` and ``steps_per_epoch``; re-iterating a finite
dataset stalls Keras) and inference images/s with a compiled ``model(x, training=False)``.
Median of --repeats timed runs after a warm-up, with the min-max spread.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def original(keras, size: int = 256, num_classes: int = 5):
    """The original write-up's code block (second Flatten included), in Keras 3 or Keras 2."""
    layers = keras.layers
    first = layers.InputLayer(shape=(size, size, 3)) if keras.__version__ >= "3" else \
        layers.InputLayer(input_shape=(size, size, 3))  # Keras 2's spelling
    return keras.Sequential([
        first,
        layers.Conv2D(64, kernel_size=(6, 6), padding="valid", activation="relu"),
        layers.BatchNormalization(),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(16, kernel_size=(3, 3), padding="valid", activation="relu"),
        layers.BatchNormalization(),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.BatchNormalization(),
        layers.Dropout(0.1),
        layers.Flatten(),
        layers.Dense(16, activation="relu"),
        layers.BatchNormalization(),
        layers.Dropout(0.1),
        layers.Dense(num_classes, activation="softmax"),
    ])


def build(tf, num_classes: int = 5):
    model = original(tf.keras, 256, num_classes)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def main() -> None:
    from common import median_spread  # (torch and Lightning: not needed for original())

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    try:
        import numpy as np
        import tensorflow as tf
    except ImportError:
        raise SystemExit('error: needs TensorFlow: pip install -e ".[bench]"') from None

    model = build(tf)
    print(f"# TensorFlow {tf.__version__}, Keras {tf.keras.__version__}, "
          f"{model.count_params():,} parameters; batch {args.batch_size}", flush=True)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch_size, 256, 256, 3), dtype=np.float32)
    y = tf.keras.utils.to_categorical(np.arange(args.batch_size) % 5, 5)
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()

    model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # warm-up: tracing, allocation
    train = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0)
        train.append(args.batch_size * args.steps / (time.perf_counter() - start))

    infer_fn = tf.function(lambda batch: model(batch, training=False))
    xt = tf.constant(x)
    infer_fn(xt).numpy()
    infer = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            infer_fn(xt).numpy()
        infer.append(args.batch_size * args.steps / (time.perf_counter() - start))
    print(f"{'Keras (TensorFlow) fp32':34} train {median_spread(train)} img/s   "
          f"infer {median_spread(infer)} img/s")


if __name__ == "__main__":
    main()
