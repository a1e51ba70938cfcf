"""Test-only model factories for `detaudit audit` (module:function paths)."""

import keras


def decoder(dropout=False):
    """A small Conv2DTranspose decoder; deterministic on CPU."""
    layers = [keras.Input((4, 4, 3)), keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same", name="up1")]
    if dropout:
        layers.append(keras.layers.Dropout(0.5, name="drop"))  # unseeded on purpose
    layers.append(keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same", name="up2"))
    return keras.Sequential(layers)


def with_dropout():
    return decoder(dropout=True)


def random_order():
    """A decoder whose middle layer sums its bias gradient in a random order."""
    from tests.support_layers import RandomOrderSumConv2DTranspose

    return keras.Sequential([
        keras.Input((4, 4, 3)),
        keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same", name="up1"),
        RandomOrderSumConv2DTranspose(filters=2, kernel_size=3, strides=2, padding="same", name="shaky"),
        keras.layers.Conv2D(2, 3, padding="same", name="head"),
    ])


def one_layer():
    """A model of one layer: its tap returns a bare tensor, not a list."""
    return keras.Sequential([keras.Input((4, 4, 2)),
                             keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same", name="only")])


def broken():
    raise RuntimeError("a broken factory")


not_a_function = 5
