"""The DCGAN generator of the Keras example, shrunk so that ``detaudit audit`` runs it in seconds.

Source: keras-team/keras-io, ``examples/generative/dcgan_overriding_train_step.py``
("DCGAN to generate face images", fchollet; https://keras.io/examples/generative/dcgan_overriding_train_step/).
The original maps a 128-d latent vector through ``Dense(8 * 8 * 128)`` and
``Reshape((8, 8, 128))``, then three ``Conv2DTranspose`` layers with 128, 256 and
512 filters (kernel 4, stride 2, ``same``) each followed by ``LeakyReLU(0.2)``, and
ends with ``Conv2D(3, 5, padding="same", activation="sigmoid")``: 64x64x3 images.

What was shrunk, nothing else changed (same layer kinds, kernels, strides,
padding and activations, in the same order):

- latent vector 128 -> 16;
- start map 8x8x128 -> 4x4x16;
- three upsampling stages (128, 256, 512 filters) -> two (8 and 16 filters),
  so the output is 16x16x3 instead of 64x64x3.

Audit it (from the repository root)::

    detaudit audit examples.dcgan_generator:build_generator --steps 2 --repeats 2

The factory returns an uncompiled model, so ``detaudit`` synthesizes a seeded batch
of latent vectors from the ``keras.Input`` shape and trains with SGD on MSE against
seeded random targets (it says so); the transposed convolutions are the layers under
audit. Return ``(model, data)`` from a compiled model to audit your own training.
"""

from __future__ import annotations

import keras
from keras import layers

LATENT_DIM = 16
START = 4
START_CHANNELS = 16
UPSAMPLING_FILTERS = (8, 16)


def build_generator(latent_dim: int = LATENT_DIM) -> keras.Model:
    """The shrunk DCGAN generator: (batch, latent_dim) -> (batch, 16, 16, 3) in [0, 1]."""
    stages = []
    for filters in UPSAMPLING_FILTERS:
        stages += [layers.Conv2DTranspose(filters, kernel_size=4, strides=2, padding="same"),
                   layers.LeakyReLU(negative_slope=0.2)]
    return keras.Sequential(
        [
            keras.Input(shape=(latent_dim,)),
            layers.Dense(START * START * START_CHANNELS),
            layers.Reshape((START, START, START_CHANNELS)),
            *stages,
            layers.Conv2D(3, kernel_size=5, padding="same", activation="sigmoid"),
        ],
        name="generator",
    )
