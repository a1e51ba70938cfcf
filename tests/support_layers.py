"""Test-only layers that misbehave on purpose, imported by workers through `kind: "tests.support_layers:..."`.

They let the CPU test suite exercise paths that real nondeterminism only
reaches on GPUs: a backward pass that sums in a random order (as atomicAdd
does), an op that refuses determinism, a worker that dies, a worker that hangs.
"""

from __future__ import annotations

import os
import signal
import time

import keras
import tensorflow as tf
from tensorflow.python.framework import config as tf_config


@tf.custom_gradient
def _random_order_bias_add(outputs: tf.Tensor, bias: tf.Tensor):
    def grad(upstream: tf.Tensor):
        flat = tf.reshape(upstream, [-1, tf.shape(upstream)[-1]])
        order = tf.range(tf.shape(flat)[0])
        if not tf_config.is_op_determinism_enabled():
            order = tf.random.shuffle(order)  # a new order on every pass, like GPU atomics
        # A running sum, so the order of the terms decides the rounding.
        grad_bias = tf.math.cumsum(tf.gather(flat, order), axis=0)[-1]
        return upstream, grad_bias

    return outputs + bias, grad


class RandomOrderSumConv2DTranspose(keras.layers.Conv2DTranspose):
    """Conv2DTranspose whose bias gradient sums in a random order unless op determinism is on.

    The forward pass is exact and repeatable; only grad_bias varies run to run.
    """

    def __init__(self, **kwargs):
        super().__init__(use_bias=False, **kwargs)

    def build(self, input_shape):
        super().build(input_shape)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, inputs):
        return _random_order_bias_add(super().call(inputs), tf.convert_to_tensor(self.bias))


class RefusesDeterminism(keras.layers.Conv2DTranspose):
    """Raises the UnimplementedError TensorFlow raises for ops without a deterministic kernel."""

    def call(self, inputs):
        if tf_config.is_op_determinism_enabled():
            raise tf.errors.UnimplementedError(
                None, None, "Determinism is not yet supported in GPU implementation of FakeOp.")
        return super().call(inputs)


class KillsProcess(keras.layers.Layer):
    """Kills its own worker process with SIGSEGV, as a crashing native kernel would."""

    def call(self, inputs):
        os.kill(os.getpid(), signal.SIGSEGV)
        return inputs


class Hangs(keras.layers.Layer):
    """Never returns, as a deadlocked kernel would."""

    def call(self, inputs):
        time.sleep(3600)
        return inputs


class CrashesOnce(keras.layers.Layer):
    """Kills its worker the first time it runs (while `marker` does not exist), then works: a flaky crash."""

    def __init__(self, marker, **kwargs):
        super().__init__(**kwargs)
        self.marker = marker

    def call(self, inputs):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGSEGV)
        return inputs * 2.0


def not_a_layer(**kwargs):
    """A plain function: a config may not name it as a layer kind (it is never called)."""
    open("CALLED", "w").close()
    return keras.layers.Identity()


HOSTILE_TEXT = "[bold red]x[/] \x1b[2J \x1b]0;title\x07 \x00 end"


class RaisesHostileText(keras.layers.Layer):
    """Raises with text a terminal would obey (escapes, rich markup) and XML cannot hold (NUL, BEL)."""

    def call(self, inputs):
        raise ValueError(HOSTILE_TEXT)


class DiesPrintingHostileText(keras.layers.Layer):
    """Prints that text to its worker's stderr, then kills the worker: the text reaches the crash record."""

    def call(self, inputs):
        import sys

        sys.stderr.write(HOSTILE_TEXT + "\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGSEGV)
        return inputs
