"""Layer configurations the TensorFlow tests share: one of each kind, tiny shapes (CPU)."""

from __future__ import annotations

TINY = {"filters": 2, "kernel_size": 3, "strides": 2, "padding": "same"}
#: The smallest layer a command-line test runs: one Conv1DTranspose on a [1, 4, 2] input.
TINY_1D = {"kind": "Conv1DTranspose", **TINY, "input_shape": [1, 4, 2]}
#: Config keys that make a run one environment group (the default matrix has two, determinism off and on;
#: the default baseline is determinism on): one TensorFlow worker start instead of two, for tests that only
#: need a run to have happened.
ONE_GROUP = {"matrix": {"determinism": "on"}}
ALL_KINDS = [
    {"kind": "Conv1DTranspose", **TINY, "input_shape": [2, 5, 3]},
    {"kind": "Conv2DTranspose", "filters": 2, "kernel_size": 3, "strides": 2, "padding": "valid",
     "output_padding": 1, "input_shape": [2, 4, 4, 3]},
    {"kind": "Conv2DTranspose", "filters": 2, "kernel_size": 3, "use_bias": False, "input_shape": [1, 4, 4, 2]},
    # TensorFlow's own CPU kernels refuse dilated transposed convolutions; oneDNN's and the GPU's run them.
    {"kind": "Conv2DTranspose", "filters": 2, "kernel_size": 3, "dilation_rate": 2, "input_shape": [1, 5, 4, 2]},
    {"kind": "Conv3DTranspose", **TINY, "input_shape": [1, 3, 3, 3, 2]},
    {"kind": "conv1d_transpose", **TINY, "use_bias": True, "input_shape": [2, 5, 3]},
    {"kind": "conv2d_transpose", **TINY, "output_shape": [2, 8, 8, 2], "input_shape": [2, 4, 4, 3]},
    {"kind": "conv3d_transpose", **TINY, "input_shape": [1, 3, 3, 3, 2]},
    {"kind": "resize_conv2d", "filters": 2, "kernel_size": 3, "input_shape": [2, 4, 4, 3]},
    {"kind": "tests.support_layers:RandomOrderSumConv2DTranspose", **TINY, "input_shape": [2, 6, 6, 3]},
    {"kind": "tests.support_layers:RefusesDeterminism", "filters": 2, "kernel_size": 3, "input_shape": [1, 4, 4, 2]},
    # Same padding, even kernel, output_padding 0: TensorFlow fails at run time, in words that depend on oneDNN.
    {"kind": "Conv2DTranspose", "filters": 2, "kernel_size": 4, "strides": 2, "padding": "same",
     "output_padding": 0, "input_shape": [1, 5, 5, 2]},
]
