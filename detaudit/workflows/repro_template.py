"""Standalone reproducer emitted by `detaudit triage` (TensorFlow and NumPy only).

Rebuilds the minimal case with the same seeded weights, input and upstream
gradient as detaudit, applies the settings before TensorFlow starts, runs the
forward and backward pass and compares the bits. Exit 1 when they differ.

    python repro.py            # run it; prints whether the bits differ and the max ULP
"""

import json
import os
import subprocess
import sys
import tempfile

CASE = json.loads(r"""__CASE__""")  # layer kind, params, input shape, seed, repeats, settings, mode


def apply_settings_before_import(settings):
    for name in ("TF_DETERMINISTIC_OPS", "TF_CUDNN_DETERMINISTIC"):
        os.environ.pop(name, None)
    if settings["determinism"] == "env":
        os.environ["TF_DETERMINISTIC_OPS"] = "1"
    if settings["onednn"] in ("off", "on"):
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0" if settings["onednn"] == "off" else "1"


def _length(n, k, s, padding, d):
    k_eff = (k - 1) * d + 1
    return n * s if padding == "same" else n * s + max(k_eff - s, 0)


def RawTranspose(kind, params):  # noqa: N802 - builds the class once TensorFlow is imported
    import keras
    import tensorflow as tf

    class Raw(keras.layers.Layer):
        """tf.nn.convNd_transpose with an explicit output_shape, plus tf.nn.bias_add."""

        def build(self, shape):
            last = params["data_format"] == "channels_last"
            channels = shape[-1] if last else shape[1]
            self.kernel = self.add_weight(name="kernel", shape=(*params["kernel_size"], params["filters"], channels))
            self.bias = self.add_weight(name="bias", shape=(params["filters"],)) if params["use_bias"] else None

        def call(self, x):
            rank, last = int(kind[4]), params["data_format"] == "channels_last"
            spatial = list(x.shape[1:-1] if last else x.shape[2:])
            lengths = params["output_shape"] and (params["output_shape"][1:-1] if last else params["output_shape"][2:])
            lengths = lengths or [_length(n, k, s, params["padding"], d) for n, k, s, d in
                                  zip(spatial, params["kernel_size"], params["strides"], params["dilation_rate"])]
            shape = [x.shape[0], *lengths, params["filters"]] if last else [x.shape[0], params["filters"], *lengths]
            fmt = {1: "NWC", 2: "NHWC", 3: "NDHWC"}[rank] if last else {1: "NCW", 2: "NCHW", 3: "NCDHW"}[rank]
            y = getattr(tf.nn, kind)(x, self.kernel, output_shape=shape, strides=params["strides"],
                                     padding=params["padding"].upper(), data_format=fmt,
                                     dilations=params["dilation_rate"])
            if self.bias is not None:
                y = tf.nn.bias_add(y, self.bias, data_format="N..C" if last else "NC..")
            return y

    return Raw()


def run_case(settings):
    """The tensors of `repeats` passes of the case under `settings`, as NumPy arrays."""
    apply_settings_before_import(settings)
    import keras
    import numpy as np
    import tensorflow as tf

    if settings["threads"]:
        tf.config.threading.set_intra_op_parallelism_threads(settings["threads"])
    if settings["determinism"] == "on":
        tf.config.experimental.enable_op_determinism()
    if settings["tf32"] == "off":
        tf.config.experimental.enable_tensor_float_32_execution(False)
    keras.config.set_dtype_policy(settings["precision"])
    kind, params, shape, seed = CASE["kind"], dict(CASE["params"]), CASE["input_shape"], CASE["seed"]
    device = "/CPU:0" if settings["device"] == "cpu" else "/GPU:" + (settings["device"].partition(":")[2] or "0")
    with tf.device(device):
        if kind in ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"):
            params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
            layer = getattr(keras.layers, kind)(**params)
        elif kind in ("conv1d_transpose", "conv2d_transpose", "conv3d_transpose"):
            layer = RawTranspose(kind, params)
        elif kind == "resize_conv2d":
            layer = keras.Sequential([
                keras.layers.UpSampling2D(tuple(params["size"]), interpolation=params["interpolation"],
                                          data_format=params["data_format"]),
                keras.layers.Conv2D(params["filters"], tuple(params["kernel_size"]), padding=params["padding"],
                                    data_format=params["data_format"], use_bias=params["use_bias"])])
        else:  # a user layer, "package.module:Class", imported from the current directory
            import importlib
            sys.path.insert(0, os.getcwd())
            module, _, attr = kind.partition(":")
            target = importlib.import_module(module)
            for part in attr.split("."):
                target = getattr(target, part)
            keras.utils.set_random_seed(seed)
            layer = target(**params)
        policy = keras.config.dtype_policy()
        x = tf.constant(np.random.default_rng([seed, 0]).standard_normal(shape, dtype=np.float32)
                        .astype(policy.variable_dtype))
        y = layer(x)
        rng = np.random.default_rng([seed, 1])
        for v in layer.trainable_variables:  # the same seeded values detaudit used
            values = rng.standard_normal(tuple(v.shape), dtype=np.float32)
            values = values * np.float32(0.1) if len(v.shape) <= 1 else values / np.float32(np.sqrt(np.prod(v.shape[:-1])))
            v.assign(values.astype(v.dtype))
        dy = tf.constant(np.random.default_rng([seed, 2]).standard_normal(tuple(y.shape), dtype=np.float32)
                         .astype(y.dtype.as_numpy_dtype))
        variables = list(layer.trainable_variables)

        def step(x, dy):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
            grads = tape.gradient(y, [x, *variables], output_gradients=dy)
            return [y, *grads]

        compiled = tf.function(step, jit_compile=settings["xla"] == "on")
        return [[t.numpy() for t in compiled(x, dy)] for _ in range(CASE["repeats"])]


def ulp(a, b):
    """Max ULP distance between two arrays of one float dtype, exact (ordered sign-magnitude integers)."""
    import numpy as np

    width = a.dtype.itemsize
    bits_a, bits_b = a.reshape(-1).view(f"u{width}"), b.reshape(-1).view(f"u{width}")
    differing = np.flatnonzero(bits_a != bits_b)

    def key(bits):
        bits = int(bits)
        magnitude = bits & ((1 << (8 * width - 1)) - 1)
        return -magnitude if bits >> (8 * width - 1) else magnitude

    return max((abs(key(bits_a[i]) - key(bits_b[i])) for i in differing), default=0)


def main():
    names = CASE["names"]
    if CASE["mode"] == "repeat":
        runs = run_case(CASE["settings"])
        first, differ = runs[0], False
        for later in runs[1:]:
            for name, a, b in zip(names, first, later):
                if a.tobytes() != b.tobytes():
                    differ = True
                    print(f"{name}: bits differ run to run, max {ulp(a, b)} ULP")
    else:  # drift: the same case under two settings, each in a fresh process
        outputs = []
        for settings in (CASE["settings"], CASE["reference_settings"]):
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "out.npz")
                subprocess.run([sys.executable, __file__, "--child", json.dumps(settings), path], check=True)
                import numpy as np
                with np.load(path) as data:
                    outputs.append([data[f"t{i}"] for i in range(len(data.files))])
        differ = False
        for name, a, b in zip(names, *outputs):
            if a.dtype != b.dtype:
                a, b = a.astype("float32"), b.astype("float32")
            if a.tobytes() != b.tobytes():
                differ = True
                print(f"{name}: bits differ between the two settings, max {ulp(a, b)} ULP")
    print("DIFFER" if differ else "IDENTICAL")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        import numpy as np

        CASE["repeats"] = 1
        tensors = run_case(json.loads(sys.argv[2]))[0]
        # float16/bfloat16 widen to float32 exactly, so npz can hold them
        np.savez(sys.argv[3], **{f"t{i}": t.astype(np.float32) if t.dtype.itemsize < 4 else t
                                 for i, t in enumerate(tensors)})
    else:
        main()
