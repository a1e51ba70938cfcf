"""A pix2pix-style training, shrunk so that ``detaudit audit`` runs it in seconds on a CPU.

The generator follows the TensorFlow pix2pix tutorial (Conv2DTranspose blocks
with BatchNormalization and Dropout inside Sequential blocks, Adam with
beta_1=0.5, an L1 loss), trained on a shuffled tf.data pipeline. Audit it as
your own training::

    detaudit audit examples.pix2pix_training:build_training
    detaudit audit examples.pix2pix_training:build_training_unordered   # a pipeline that reorders elements

The second factory adds what many input pipelines do for speed: a parallel map
with ``deterministic=False`` followed by ``prefetch``. Its elements come out in
the order they finish, so the batches, and then the weights, differ run to run.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

IMAGE = 16


def _upsample(filters: int, name: str, dropout: bool) -> keras.Sequential:
    block = keras.Sequential(name=name)
    block.add(keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="same", use_bias=False))
    block.add(keras.layers.BatchNormalization())
    if dropout:
        block.add(keras.layers.Dropout(0.5))
    block.add(keras.layers.ReLU())
    return block


def _generator() -> keras.Model:
    inputs = keras.Input((IMAGE, IMAGE, 3))
    d1 = keras.layers.Conv2D(8, 4, strides=2, padding="same", name="down1")(inputs)
    d2 = keras.layers.Conv2D(16, 4, strides=2, padding="same", name="down2")(keras.layers.LeakyReLU()(d1))
    u1 = _upsample(8, "up1", dropout=True)(d2)
    u2 = _upsample(8, "up2", dropout=False)(keras.layers.Concatenate()([u1, d1]))
    outputs = keras.layers.Conv2D(3, 3, padding="same", activation="tanh", name="last")(u2)
    model = keras.Model(inputs, outputs, name="generator")

    def l1_loss(target, generated):
        return tf.reduce_mean(tf.abs(target - generated))

    model.compile(optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5), loss=l1_loss)
    return model


def _pairs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, IMAGE, IMAGE, 3)).astype("float32")
    return x, np.tanh(x[..., ::-1]).astype("float32")


def _jitter(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.image.flip_left_right(x), tf.image.flip_left_right(y)


def build_training() -> tuple[keras.Model, tf.data.Dataset]:
    """The generator and its data: shuffle(seeded by the global seed), map, batch."""
    x, y = _pairs()
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(32).map(_jitter).batch(8)
    return _generator(), data


def build_training_unordered() -> tuple[keras.Model, tf.data.Dataset]:
    """The same with a parallel map that hands out elements as they finish (deterministic=False, then prefetch)."""
    x, y = _pairs()

    def slow_jitter(a: tf.Tensor, b: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # Elements take different times, as decoding files of different sizes does.
        a = tf.numpy_function(lambda t: (__import__("time").sleep(np.random.default_rng().uniform(0, 0.003)), t)[1],
                              [a], tf.float32, stateful=True)
        return _jitter(tf.ensure_shape(a, (IMAGE, IMAGE, 3)), b)

    data = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(32)
            .map(slow_jitter, num_parallel_calls=4, deterministic=False).prefetch(4).batch(8))
    return _generator(), data
