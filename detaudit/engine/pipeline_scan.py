"""Known nondeterminism sources in a tf.data pipeline, read from the dataset's own graph (imports TensorFlow).

The graph is the one ``tf.raw_ops.DatasetToGraphV2`` serializes, before
tf.data's optimizations. Sources named, each with its fix:

- ``deterministic=False`` on a parallel map, interleave or batch (elements in
  completion order). A parallel map directly followed by ``batch`` is fused into
  an ordered MapAndBatch by the default ``map_and_batch_fusion`` optimization:
  not a source, said as such;
- ``options.deterministic = False`` (every parallel stage of the pipeline);
- a shuffle without a seed (no global seed set either);
- stateful random ops (``tf.random.uniform`` ...) in a map function: unseeded,
  or under ``num_parallel_calls``, where the draws go to elements in completion
  order.

These are candidates: the batch digests of two fresh processes and of repeats
decide whether the pipeline is reproducible.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

__all__ = ["STATEFUL_RANDOM_OPS", "scan_dataset"]

_PARALLEL = {"ParallelMapDataset": "map", "ParallelMapDatasetV2": "map", "ParallelInterleaveDatasetV2": "interleave",
             "ParallelInterleaveDatasetV3": "interleave", "ParallelInterleaveDatasetV4": "interleave",
             "ParallelBatchDataset": "batch", "MapAndBatchDataset": "map"}
_SHUFFLES = {"ShuffleDataset", "ShuffleDatasetV2", "ShuffleDatasetV3", "ShuffleAndRepeatDataset",
             "ShuffleAndRepeatDatasetV2"}
_BATCHES = {"BatchDataset", "BatchDatasetV2"}
STATEFUL_RANDOM_OPS = {"RandomUniform", "RandomUniformInt", "RandomStandardNormal", "TruncatedNormal", "RandomShuffle",
                       "Multinomial", "RandomGamma", "RandomPoisson", "RandomPoissonV2"}


def _graph(dataset: tf.data.Dataset) -> Any:
    serialized = tf.raw_ops.DatasetToGraphV2(input_dataset=dataset._variant_tensor,  # noqa: SLF001 - no public way
                                             external_state_policy=1, strip_device_assignment=True)
    return tf.compat.v1.GraphDef.FromString(serialized.numpy())


def _const(nodes: dict[str, Any], name: str) -> int | None:
    node = nodes.get(name.split(":")[0].lstrip("^"))
    if node is None or node.op != "Const":
        return None
    return int(tf.make_ndarray(node.attr["value"].tensor))


def _options_nondeterministic(node: Any) -> bool:
    from tensorflow.core.framework import dataset_options_pb2

    options = dataset_options_pb2.Options.FromString(node.attr["serialized_options"].s)
    return options.HasField("deterministic") and not options.deterministic


def scan_dataset(dataset: tf.data.Dataset) -> list[dict[str, str]]:
    """The candidate nondeterminism sources of ``dataset``: each a dict of ``node``, ``problem``, ``fix``, ``source``
    (``yes``, or ``no`` with why, for a pattern that looks like one but is not)."""
    try:
        graph = _graph(dataset)
    except (tf.errors.OpError, ValueError, AttributeError, TypeError) as exc:
        return [{"node": "pipeline", "problem": f"its graph could not be read ({type(exc).__name__})", "fix": "",
                 "source": "unknown"}]
    nodes = {node.name: node for node in graph.node}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        if node.input:
            consumers.setdefault(node.input[0].split(":")[0], []).append(node)
    functions = {f.signature.name: f for f in graph.library.function}
    found = []
    for node in graph.node:
        stage = _PARALLEL.get(node.op)
        if stage and "deterministic" in node.attr and node.attr["deterministic"].s == b"false":
            after = consumers.get(node.name, [])
            fused = stage == "map" and node.op != "MapAndBatchDataset" and any(c.op in _BATCHES for c in after)
            found.append({"node": node.name, "problem": f"a parallel {stage} with deterministic=False hands out "
                          "elements in the order they finish",
                          "fix": f"drop deterministic=False from the {stage} (or set it True)",
                          "source": "no: directly followed by batch, so tf.data fuses it into an ordered MapAndBatch"
                          if fused else "yes"})
        if node.op == "OptionsDataset" and _options_nondeterministic(node):
            found.append({"node": node.name, "problem": "options.deterministic = False lets every parallel stage "
                          "hand out elements in the order they finish",
                          "fix": "leave tf.data.Options().deterministic at its default (True)", "source": "yes"})
        if node.op in _SHUFFLES and len(node.input) >= 3:
            seeds = (_const(nodes, node.input[2]), _const(nodes, node.input[3]) if len(node.input) > 3 else 0)
            if seeds == (0, 0):
                found.append({"node": node.name, "problem": "a shuffle without a seed, and no global seed was set",
                              "fix": "pass seed=... to shuffle, or call keras.utils.set_random_seed first",
                              "source": "yes"})
        if "f" in node.attr and node.attr["f"].func.name in functions:
            found.extend(_random_in_function(node, functions[node.attr["f"].func.name], bool(stage)))
    return found


def _random_in_function(node: Any, function: Any, parallel: bool) -> list[dict[str, str]]:
    rows = []
    for op in function.node_def:
        if op.op not in STATEFUL_RANDOM_OPS:
            continue
        unseeded = op.attr["seed"].i == 0 and op.attr["seed2"].i == 0
        if not (unseeded or parallel):
            continue
        why = "without a seed" if unseeded else "under num_parallel_calls, so draws go to elements in the order " \
            "they run"
        rows.append({"node": node.name, "problem": f"the map function {function.signature.name} calls the stateful "
                     f"random op {op.op} {why}",
                     "fix": "use a stateless op (tf.random.stateless_uniform) with a seed taken from the element "
                     "(e.g. zip the dataset with tf.data.Dataset.random(seed=...) or an index)", "source": "yes"})
    return rows
