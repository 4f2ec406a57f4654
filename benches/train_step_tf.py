"""Keras Xception's training step on TensorFlow-CPU, timed: the reference for digit3d's.

Usage: python3 train_step_tf.py BATCH STEPS
Builds Xception(weights=None, include_top=False, input_shape=(256, 256, 1), pooling="avg")
with a 10-way softmax on top, and times STEPS training steps of random batches after two
warm-up steps. Prints one JSON line: samples per second, and the versions.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf


def main():
    batch, steps = int(sys.argv[1]), int(sys.argv[2])
    backbone = tf.keras.applications.Xception(
        weights=None, include_top=False, input_shape=(256, 256, 1), pooling="avg"
    )
    model = tf.keras.Sequential([backbone, tf.keras.layers.Dense(10)])
    model.compile(
        optimizer=tf.keras.optimizers.AdamW(1e-3),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = (rng.random((batch, 256, 256, 1)) < 0.1).astype(np.float32)
    y = rng.integers(0, 10, size=batch)
    for _ in range(2):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "samples_per_second": batch * steps / seconds,
        "backbone_params": int(backbone.count_params()),
        "tensorflow": tf.__version__,
    }))


if __name__ == "__main__":
    main()
