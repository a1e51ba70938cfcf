"""The U-Net of the Keras segmentation example, shrunk so that ``detaudit audit`` runs it in seconds.

Source: keras-team/keras-io, ``examples/vision/oxford_pets_image_segmentation.py``
("Image segmentation with a U-Net-like architecture", fchollet;
https://keras.io/examples/vision/oxford_pets_image_segmentation/). The original
takes 160x160x3 images and 3 classes: an entry ``Conv2D(32, 3, strides=2)`` +
BatchNormalization + ReLU; three down blocks (64, 128, 256 filters) of
ReLU -> SeparableConv2D -> BatchNormalization, twice, then
``MaxPooling2D(3, strides=2)`` plus a strided 1x1 ``Conv2D`` residual; four up
blocks (256, 128, 64, 32 filters) of ReLU -> Conv2DTranspose (kernel 3, stride 1)
-> BatchNormalization, twice, then ``UpSampling2D(2)`` plus an upsampled 1x1
``Conv2D`` residual; and a ``Conv2D(num_classes, 3, activation="softmax")`` head.

What was shrunk, nothing else changed (same layer kinds, order, residuals and head):

- input 160x160x3 -> 32x32x3, 3 classes kept;
- entry filters 32 -> 8;
- down blocks (64, 128, 256) -> (8, 16);
- up blocks (256, 128, 64, 32) -> (16, 8), which with the entry's stride 2 and
  two poolings gives back a 32x32 map: the output is 32x32x3.

Audit it (from the repository root)::

    detaudit audit examples.unet_segmentation:build_unet --steps 2 --repeats 2

The input shape is fully known (``keras.Input((32, 32, 3))``), so ``detaudit``
synthesizes a seeded batch itself. BatchNormalization runs in training mode in the
audit; each execution rebuilds the model from the seed, so its moving statistics start
where a rerun's would.
"""

from __future__ import annotations

import keras
from keras import layers

IMG_SIZE = (32, 32)
NUM_CLASSES = 3
ENTRY_FILTERS = 8
DOWN_FILTERS = (8, 16)
UP_FILTERS = (16, 8)


def build_unet(img_size: tuple[int, int] = IMG_SIZE, num_classes: int = NUM_CLASSES) -> keras.Model:
    """The shrunk U-Net: (batch, 32, 32, 3) -> (batch, 32, 32, num_classes) per-pixel softmax."""
    inputs = keras.Input(shape=(*img_size, 3))

    # Entry block: downsample once.
    x = layers.Conv2D(ENTRY_FILTERS, 3, strides=2, padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    previous_block_activation = x  # set aside the residual

    # Down blocks: separable convolutions, pooling, projected residual.
    for filters in DOWN_FILTERS:
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(filters, 1, strides=2, padding="same")(previous_block_activation)
        x = layers.add([x, residual])
        previous_block_activation = x

    # Up blocks: transposed convolutions, nearest upsampling, projected residual.
    for filters in UP_FILTERS:
        x = layers.Activation("relu")(x)
        x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.UpSampling2D(2)(x)
        residual = layers.UpSampling2D(2)(previous_block_activation)
        residual = layers.Conv2D(filters, 1, padding="same")(residual)
        x = layers.add([x, residual])
        previous_block_activation = x

    # Per-pixel classification head.
    outputs = layers.Conv2D(num_classes, 3, activation="softmax", padding="same")(x)
    return keras.Model(inputs, outputs, name="unet")
