"""Determinism tests for a Conv2DTranspose, written with detaudit's pytest plugin.

Run:  pytest examples/test_with_plugin.py

The plugin comes with detaudit (no conftest or `-p` option needed). Its header
line, starting with `detaudit:`, shows what decides determinism on this machine
(TensorFlow and Keras versions, GPUs, oneDNN, op determinism, XLA, TF32).

Both checks pass on a CPU. On a GPU without
`tf.config.experimental.enable_op_determinism()` the gradient check is the one
expected to fail: cuDNN's backward-filter algorithms may add in any order.
"""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

INPUT_SHAPE = (2, 8, 8, 3)


@pytest.fixture
def layer():
    """A Conv2DTranspose with weights drawn from a seeded generator: the same bits on every machine."""
    conv = keras.layers.Conv2DTranspose(filters=4, kernel_size=3, strides=2, padding="same")
    conv.build(INPUT_SHAPE)
    rng = np.random.default_rng(0)
    conv.set_weights([rng.standard_normal(w.shape).astype("float32") for w in conv.get_weights()])
    return conv


@pytest.fixture
def inputs():
    return tf.constant(np.random.default_rng(1).standard_normal(INPUT_SHAPE).astype("float32"))


@pytest.mark.deterministic(repeats=3)
def test_forward_pass_is_bitwise_reproducible(layer, inputs):
    # The plugin runs this body three times (fixtures are set up once) and
    # compares what it returns bit for bit.
    return layer(inputs)


def test_gradients_are_reproducible(layer, inputs, assert_deterministic):
    upstream = tf.constant(np.random.default_rng(2).standard_normal((2, 16, 16, 4)).astype("float32"))

    def gradients(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        grad_input, grad_kernel, grad_bias = tape.gradient(y, [x, layer.kernel, layer.bias],
                                                           output_gradients=upstream)
        return {"input": grad_input, "kernel": grad_kernel, "bias": grad_bias}

    # Allow each gradient element to move by up to 4 ULPs between calls.
    assert_deterministic(gradients, inputs, repeats=3, max_ulp=4)
