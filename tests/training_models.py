"""Trainings for `detaudit audit` tests: module:function factories returning a model or (model, data).

Small versions of public model definitions: the pix2pix generator of the TensorFlow tutorial, a keras.io VAE
decoder, the keras.io DCGAN with its own train_step, a two-input model; and planted faults: a parallel map whose
elements come out in completion order, a backward pass that sums in a truly random order unless op
determinism is on, and a train_step whose random draws live outside any checkpoint.
"""

import time

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import config as tf_config


def _images(n=8, size=8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, size, size, channels)).astype("float32")


def _upsample(filters, name, dropout=False):
    block = keras.Sequential(name=name)
    block.add(keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="same", use_bias=False))
    block.add(keras.layers.BatchNormalization())
    if dropout:
        block.add(keras.layers.Dropout(0.5))  # unseeded, as in the tutorial
    block.add(keras.layers.ReLU())
    return block


def pix2pix():
    """A pix2pix-style generator: Dropout inside Sequential blocks, Adam, its own L1 loss, shuffled tf.data."""
    inputs = keras.Input((8, 8, 3))
    down = keras.layers.Conv2D(8, 4, strides=2, padding="same", name="down1")(inputs)
    x = _upsample(8, "up1", dropout=True)(down)
    x = keras.layers.Concatenate(name="skip")([x, inputs])
    outputs = keras.layers.Conv2D(3, 3, padding="same", activation="tanh", name="last")(x)
    model = keras.Model(inputs, outputs, name="generator")

    def l1(y_true, y_pred):
        return tf.reduce_mean(tf.abs(y_true - y_pred))

    model.compile(optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5), loss=l1)
    x_data, y_data = _images(16), np.tanh(_images(16, seed=1))
    data = tf.data.Dataset.from_tensor_slices((x_data, y_data)).shuffle(16).batch(4)
    return model, data


def vae_decoder():
    """The keras.io VAE decoder, shrunk: Dense, Reshape, two Conv2DTranspose; (x, y) arrays."""
    latent = keras.Input((2,))
    x = keras.layers.Dense(2 * 2 * 8, activation="relu")(latent)
    x = keras.layers.Reshape((2, 2, 8))(x)
    x = keras.layers.Conv2DTranspose(8, 3, activation="relu", strides=2, padding="same")(x)
    outputs = keras.layers.Conv2DTranspose(1, 3, activation="sigmoid", padding="same")(x)
    model = keras.Model(latent, outputs, name="decoder")
    model.compile(optimizer="adam", loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    return model, (rng.standard_normal((8, 2)).astype("float32"), rng.uniform(size=(8, 4, 4, 1)).astype("float32"))


class GAN(keras.Model):
    """The keras.io DCGAN's training loop: its own compile and train_step, two optimizers."""

    def __init__(self, discriminator, generator, latent_dim):
        super().__init__()
        self.discriminator, self.generator, self.latent_dim = discriminator, generator, latent_dim
        self.seed_generator = keras.random.SeedGenerator(1337)

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super().compile()
        self.d_optimizer, self.g_optimizer, self.loss_fn = d_optimizer, g_optimizer, loss_fn

    def train_step(self, real_images):
        batch_size = tf.shape(real_images)[0]
        noise = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
        generated = self.generator(noise)
        combined = tf.concat([generated, real_images], axis=0)
        labels = tf.concat([tf.ones((batch_size, 1)), tf.zeros((batch_size, 1))], axis=0)
        with tf.GradientTape() as tape:
            d_loss = self.loss_fn(labels, self.discriminator(combined))
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights))
        noise = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            g_loss = self.loss_fn(tf.zeros((batch_size, 1)), self.discriminator(self.generator(noise)))
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights))
        return {"d_loss": d_loss, "g_loss": g_loss}


def dcgan():
    latent_dim = 4
    generator = keras.Sequential([keras.Input((latent_dim,)), keras.layers.Dense(2 * 2 * 8),
                                  keras.layers.Reshape((2, 2, 8)),
                                  keras.layers.Conv2DTranspose(8, 4, strides=2, padding="same"),
                                  keras.layers.LeakyReLU(0.2),
                                  keras.layers.Conv2D(3, 3, padding="same", activation="sigmoid")], name="generator")
    discriminator = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(8, 3, strides=2, padding="same"),
                                      keras.layers.LeakyReLU(0.2), keras.layers.Flatten(), keras.layers.Dropout(0.2),
                                      keras.layers.Dense(1)], name="discriminator")
    gan = GAN(discriminator, generator, latent_dim)
    gan.compile(keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3),
                keras.losses.BinaryCrossentropy(from_logits=True))
    data = tf.data.Dataset.from_tensor_slices(np.abs(_images(8, size=4))).batch(4)
    return gan, data


def two_inputs():
    """Two named inputs, fed from dicts."""
    image = keras.Input((4, 4, 2), name="image")
    label = keras.Input((3,), name="label")
    x = keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same", name="up")(image)
    y = keras.layers.Dense(8 * 8 * 2, name="embed")(label)
    x = keras.layers.Add(name="add")([x, keras.layers.Reshape((8, 8, 2))(y)])
    model = keras.Model({"image": image, "label": label}, x)
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    data = ({"image": rng.standard_normal((4, 4, 4, 2)).astype("float32"),
             "label": rng.standard_normal((4, 3)).astype("float32")},
            rng.standard_normal((4, 8, 8, 2)).astype("float32"))
    return model, data


def _slow_identity(x, y):
    # Each element takes a random time, so a parallel map finishes them out of order.
    def sleep(value):
        time.sleep(float(np.random.default_rng().uniform(0, 0.004)))
        return value
    return tf.numpy_function(sleep, [x], tf.float32, stateful=True), y


def _small_model():
    model = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same",
                                                                                  name="up")])
    model.compile(optimizer="sgd", loss="mse")
    return model


def unordered_pipeline():
    """map(num_parallel_calls, deterministic=False) then prefetch then batch: elements in completion order."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 4, 4, 2)).astype("float32"), rng.standard_normal((16, 8, 8, 2)).astype("float32")
    data = (tf.data.Dataset.from_tensor_slices((x, y)).map(_slow_identity, num_parallel_calls=4, deterministic=False)
            .map(lambda a, b: (tf.ensure_shape(a, (4, 4, 2)), b)).prefetch(4).batch(8))
    return _small_model(), data


def fused_pipeline():
    """The same map with deterministic=False directly before batch: fused into an ordered MapAndBatch."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 4, 4, 2)).astype("float32"), rng.standard_normal((16, 8, 8, 2)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).map(
        lambda a, b: (a * 2.0, b), num_parallel_calls=4, deterministic=False).batch(8)
    return _small_model(), data


@tf.custom_gradient
def _racy_bias_add(outputs, bias):
    def grad(upstream):
        flat = tf.reshape(upstream, [-1, tf.shape(upstream)[-1]])
        order = tf.range(tf.shape(flat)[0])
        if not tf_config.is_op_determinism_enabled():
            # A truly random order on every pass (seeded from the clock), like GPU atomics: no seed reproduces it.
            clock = tf.cast(tf.math.floormod(tf.timestamp() * 1e9, 2.0**31), tf.int32)
            keys = tf.random.stateless_uniform(tf.shape(order), seed=tf.stack([clock, 7]))
            order = tf.argsort(keys)
        return upstream, tf.math.cumsum(tf.gather(flat, order), axis=0)[-1]  # a running sum: order decides rounding

    return outputs + bias, grad


class RacyConv2DTranspose(keras.layers.Conv2DTranspose):
    """Conv2DTranspose whose bias gradient sums in a random order unless op determinism is on."""

    def __init__(self, **kwargs):
        super().__init__(use_bias=False, **kwargs)

    def build(self, input_shape):
        super().build(input_shape)
        self.racy_bias = self.add_weight(name="racy_bias", shape=(self.filters,), initializer="zeros")

    def call(self, inputs):
        return _racy_bias_add(super().call(inputs), tf.convert_to_tensor(self.racy_bias))


def racy_backward():
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same",
                                                                                  name="up1"),
                              RacyConv2DTranspose(filters=2, kernel_size=3, strides=2, padding="same", name="racy"),
                              keras.layers.Conv2D(2, 3, padding="same", name="head")])
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    return model, (rng.standard_normal((4, 4, 4, 3)).astype("float32"),
                   rng.standard_normal((4, 16, 16, 2)).astype("float32"))


class NoisyStep(keras.Model):
    """A train_step that adds noise from a stateful TensorFlow op: its state is in no checkpoint."""

    def __init__(self, use_seed_generator=False, **kwargs):
        super().__init__(**kwargs)
        self.body = keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same")
        self.use_seed_generator = use_seed_generator
        self.seed_generator = keras.random.SeedGenerator(3)

    def call(self, x):
        return self.body(x)

    def train_step(self, data):
        x, y = data
        if self.use_seed_generator:  # the advice followed: the draws come from a SeedGenerator, a model variable
            x = x + 0.1 * keras.random.normal(tf.shape(x), seed=self.seed_generator)
        else:
            x = x + 0.1 * tf.random.normal(tf.shape(x))
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(self(x, training=True) - y))
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        return {"loss": loss}


def _noisy(use_seed_generator):
    model = NoisyStep(use_seed_generator)
    model.compile(optimizer="sgd")
    rng = np.random.default_rng(0)
    model(np.zeros((1, 4, 4, 2), "float32"))
    return model, (rng.standard_normal((8, 4, 4, 2)).astype("float32"),
                   rng.standard_normal((8, 8, 8, 2)).astype("float32"))


def noisy_step():
    return _noisy(False)


def noisy_step_fixed():
    return _noisy(True)


def not_a_training():
    return "a string"


def empty_data():
    return _small_model(), tf.data.Dataset.from_tensor_slices(np.zeros((0, 4, 4, 2), "float32")).batch(2)


def wrong_data():
    return _small_model(), (np.zeros((4, 5, 5, 2), "float32"), np.zeros((4, 8, 8, 2), "float32"))


def exits():
    raise SystemExit(3)


def no_weights():
    model = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.ReLU()])
    model.compile(optimizer="sgd", loss="mse")
    return model
