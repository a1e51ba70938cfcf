"""Test-only layers for the ``batch`` comparison, imported by workers as ``tests.batch_layers:...``.

A library that picks its algorithm by shape makes a sample's bits depend on
the batch it is computed in (oneDNN and cuDNN choose by batch size). These
layers do that on purpose, deterministically, so the comparison has something
to catch on any CPU.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class BatchDependentSum(keras.layers.Layer):
    """A dense layer on the flattened input whose summation order depends on the batch size.

    ``y[i, u] = sum_k x[i, k] * w[k, u]``, summed sequentially (a cumulative
    sum) starting at feature ``7 * batch`` (mod the feature count): the same
    sum in another order for every batch size, so a sample's output differs in
    its last bits between batch sizes while every repeat at one size is identical.
    The input gradient involves no sum and stays batch-invariant.
    """

    def __init__(self, units: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.features = 1
        for n in input_shape[1:]:
            self.features *= int(n)
        self.kernel = self.add_weight(shape=(self.features, self.units), initializer="glorot_uniform", name="kernel")

    def call(self, x):
        batch = int(x.shape[0] or 1)
        flat = tf.reshape(x, (-1, self.features))
        products = flat[:, :, None] * tf.cast(self.kernel, flat.dtype)[None]
        products = tf.roll(products, shift=(7 * batch) % self.features, axis=1)
        return tf.math.cumsum(products, axis=1)[:, -1, :]


class BatchInvariantSum(BatchDependentSum):
    """The same layer with one summation order for every batch size: the control, which must pass."""

    def call(self, x):
        flat = tf.reshape(x, (-1, self.features))
        products = flat[:, :, None] * tf.cast(self.kernel, flat.dtype)[None]
        return tf.math.cumsum(products, axis=1)[:, -1, :]


class OnlyItsOwnBatchSize(BatchInvariantSum):
    """Refuses any batch size but ``batch``: the batch comparison fails, the cell does not."""

    def __init__(self, units: int = 4, batch: int = 2, **kwargs):
        super().__init__(units, **kwargs)
        self.batch = batch

    def call(self, x):
        if int(x.shape[0]) != self.batch:
            raise ValueError(f"this layer runs only at batch size {self.batch}, got {int(x.shape[0])}")
        return super().call(x)
