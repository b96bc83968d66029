"""TF.js graph models (model.json + weight shards) run as pure JAX functions.

A TF.js graph model is a frozen TensorFlow GraphDef in JSON: a list of nodes (op, inputs, attrs)
whose float constants live in binary shards, some quantized (uint8 with scale/min, or float16).
`read_graph_model` turns one into

  GraphModel  static, hashable: the nodes in topological order plus the small integer constants
              (shapes, axes, paddings) that must stay static under `jax.jit`;
  params      {tensor name: float32 array}, every float constant, dequantized.

`GraphModel.apply(params, x)` evaluates the graph with `jax.numpy`/`jax.lax`: it jits,
differentiates (w.r.t. the input or the params), vmaps and runs in bfloat16 (`dtype=`). Only the
ops of the face networks we use are implemented (`OPS`); an unknown op fails when the model is
read, naming the op. Converted models are stored as `NAME.graph.json` + `NAME.npz` (`save`,
`load`): no pickle.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vasa_jax.errors import VasaInputError

_DTYPES = {"float32": np.float32, "int32": np.int32, "float16": np.float16, "uint8": np.uint8,
           "uint16": np.uint16, "bool": np.bool_}
# Attributes kept per node (others, e.g. grappler hints or "T", do not change the result).
_ATTRS = ("padding", "strides", "dilations", "fused_ops", "ksize", "squeeze_dims", "keep_dims",
          "half_pixel_centers", "align_corners", "transpose_a", "transpose_b", "epsilon",
          "data_format", "alpha", "axis")


# ---------------------------------------------------------------------------------------- graph


@dataclasses.dataclass(frozen=True)
class Node:
  name: str
  op: str
  inputs: tuple[str, ...]
  attrs: tuple[tuple[str, Any], ...]  # sorted (key, value), values hashable

  def attr(self, key: str, default=None):
    return dict(self.attrs).get(key, default)


@dataclasses.dataclass(frozen=True)
class GraphModel:
  """A frozen graph: nodes in topological order, static int constants, input and outputs."""
  name: str
  nodes: tuple[Node, ...]
  static: tuple[tuple[str, tuple], ...]  # (tensor name, nested-tuple value) of int constants
  input_name: str
  input_shape: tuple[int, ...]  # (H, W, C) without batch
  outputs: tuple[str, ...]  # default outputs (graph sinks)
  metadata: tuple[tuple[str, str], ...] = ()

  def apply(self, params: Mapping[str, jax.Array], x: jax.Array, outputs: Sequence[str] = (),
            dtype=None) -> dict[str, jax.Array] | jax.Array:
    """Evaluates the graph.

    Args:
      params: float constants (from `read_graph_model` or `load`).
      x: (B, H, W, C) input, already normalised as the model expects.
      outputs: node names to return (intermediate features too); default: the graph's outputs.
      dtype: compute dtype (e.g. jnp.bfloat16); default: x's dtype (float32 for ints).
    Returns:
      The single output array when one is asked for (and `outputs` was empty), else a dict.
    """
    want = tuple(outputs) or self.outputs
    dtype = jnp.dtype(dtype or (x.dtype if jnp.issubdtype(x.dtype, jnp.floating)
                                else jnp.float32))
    static = {k: np.asarray(v, np.int64) for k, v in self.static}
    env: dict[str, Any] = {self.input_name: jnp.asarray(x, dtype)}
    needed = _needed_nodes(self.nodes, want)

    def get(ref: str):
      ref = ref.split(":")[0]
      if ref in env:
        return env[ref]
      if ref in static:
        return static[ref]
      if ref in params:
        return jnp.asarray(params[ref], dtype)
      raise KeyError(f"{self.name}: tensor {ref!r} is neither computed nor a parameter")

    for node in self.nodes:
      if node.name not in needed or node.op in ("Const", "Placeholder"):
        continue
      args = [get(i) for i in node.inputs if not i.startswith("^")]
      env[node.name] = OPS[node.op](node, *args)
    missing = [o for o in want if o not in env and o not in params]
    if missing:
      raise KeyError(f"{self.name}: no node named {missing}")
    result = {o: env[o] if o in env else get(o) for o in want}
    return result[want[0]] if not outputs and len(want) == 1 else result

  def node_names(self, op: str | None = None) -> list[str]:
    return [n.name for n in self.nodes if op is None or n.op == op]


def _needed_nodes(nodes: Sequence[Node], want: Sequence[str]) -> set[str]:
  """Names of the nodes the wanted outputs depend on (the rest is skipped)."""
  by_name = {n.name: n for n in nodes}
  needed, stack = set(), [w.split(":")[0] for w in want]
  while stack:
    name = stack.pop()
    if name in needed or name not in by_name:
      continue
    needed.add(name)
    stack.extend(i.lstrip("^").split(":")[0] for i in by_name[name].inputs)
  return needed


def _attr_value(v: Mapping[str, Any]):
  """A TF AttrValue (JSON) -> a hashable Python value."""
  if "s" in v:
    return base64.b64decode(v["s"]).decode()
  if "i" in v:
    return int(v["i"])
  if "f" in v:
    return float(v["f"])
  if "b" in v:
    return bool(v["b"])
  if "list" in v:
    lst = v["list"]
    if "s" in lst:
      return tuple(base64.b64decode(s).decode() for s in lst["s"])
    if "i" in lst:
      return tuple(int(i) for i in lst["i"])
    if "f" in lst:
      return tuple(float(f) for f in lst["f"])
    return ()
  return None


def _topological(nodes: list[Node]) -> list[Node]:
  by_name = {n.name: n for n in nodes}
  order, state = [], {}
  for root in nodes:
    stack = [(root.name, False)]
    while stack:
      name, done = stack.pop()
      if done:
        state[name] = 2
        order.append(by_name[name])
        continue
      if state.get(name) or name not in by_name:
        continue
      state[name] = 1
      stack.append((name, True))
      for i in by_name[name].inputs:
        ref = i.lstrip("^").split(":")[0]
        if ref in by_name and not state.get(ref):
          stack.append((ref, False))
  return order


def _read_weights(model_dir: str, manifest: list) -> dict[str, np.ndarray]:
  """Weight shards -> {name: array}; uint8/uint16 (affine) and float16 weights dequantized."""
  out = {}
  for group in manifest:
    data = b"".join(open(os.path.join(model_dir, p), "rb").read() for p in group["paths"])
    offset = 0
    for w in group["weights"]:
      shape = tuple(w["shape"])
      count = int(np.prod(shape, dtype=np.int64))
      quant = w.get("quantization")
      stored = np.dtype(_DTYPES[quant["dtype"] if quant else w["dtype"]])
      raw = np.frombuffer(data, stored, count, offset).reshape(shape)
      offset += count * stored.itemsize
      if quant and quant["dtype"] in ("uint8", "uint16"):
        raw = raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
      out[w["name"]] = raw.astype(np.float32 if w["dtype"] == "float32" else _DTYPES[w["dtype"]])
    if offset != len(data):
      raise VasaInputError(f"{model_dir}: weight shards {group['paths']} hold {len(data)} bytes, "
                           f"the manifest describes {offset}; the download is damaged.")
  return out


def read_graph_model(model_json: str) -> tuple[GraphModel, dict[str, np.ndarray]]:
  """Reads a TF.js graph model (model.json next to its weight shards).

  Args:
    model_json: path of the model's JSON file.
  Returns:
    (graph, params): the static graph and its float constants as float32 numpy arrays.
  Raises:
    VasaInputError: the file is not a graph model or uses an op `OPS` does not implement.
  """
  with open(model_json) as f:
    spec = json.load(f)
  if spec.get("format") != "graph-model" or "modelTopology" not in spec:
    raise VasaInputError(f"{model_json}: not a TF.js graph model (format "
                         f"{spec.get('format')!r}); layers models are not supported.")
  weights = _read_weights(os.path.dirname(model_json), spec["weightsManifest"])
  raw_nodes = spec["modelTopology"]["node"]
  unknown = sorted({n["op"] for n in raw_nodes} - set(OPS) - {"Const", "Placeholder"})
  if unknown:
    raise VasaInputError(f"{model_json}: ops {unknown} are not implemented in "
                         f"vasa_jax.facenets.tfjs.OPS.")
  nodes = []
  for n in raw_nodes:
    attrs = tuple(sorted((k, _attr_value(v)) for k, v in n.get("attr", {}).items()
                         if k in _ATTRS))
    nodes.append(Node(n["name"], n["op"], tuple(n.get("input", ())), attrs))
  nodes = _topological(nodes)
  placeholders = [n for n in raw_nodes if n["op"] == "Placeholder"]
  if len(placeholders) != 1:
    raise VasaInputError(f"{model_json}: expected one input, found {len(placeholders)}")
  dims = placeholders[0]["attr"]["shape"]["shape"]["dim"]
  input_shape = tuple(int(d["size"]) for d in dims[1:])
  consumed = {i.lstrip("^").split(":")[0] for n in nodes for i in n.inputs}
  sinks = tuple(n.name for n in nodes if n.name not in consumed and n.op not in ("Const",
                                                                                 "Placeholder"))
  static = tuple((k, _nested(v)) for k, v in sorted(weights.items()) if v.dtype.kind in "iub")
  params = {k: v for k, v in weights.items() if v.dtype.kind == "f"}
  meta = tuple((k, str(spec[k])) for k in ("convertedBy", "generatedBy") if k in spec)
  name = os.path.splitext(os.path.basename(model_json))[0]
  return GraphModel(name, tuple(nodes), static, placeholders[0]["name"], input_shape, sinks,
                    meta), params


def _nested(a: np.ndarray):
  return a.tolist() if a.ndim == 0 else tuple(_nested(x) for x in a)


# ------------------------------------------------------------------------------------ storage


def save(graph: GraphModel, params: Mapping[str, np.ndarray], directory: str) -> str:
  """Writes NAME.graph.json and NAME.npz into `directory` (atomically). Returns the npz path."""
  os.makedirs(directory, exist_ok=True)
  keys = sorted(params)
  doc = {"name": graph.name, "input_name": graph.input_name, "input_shape": graph.input_shape,
         "outputs": graph.outputs, "metadata": dict(graph.metadata),
         "static": [[k, v] for k, v in graph.static], "params": keys,
         "nodes": [[n.name, n.op, list(n.inputs), [[k, v] for k, v in n.attrs]]
                   for n in graph.nodes]}
  npz = os.path.join(directory, f"{graph.name}.npz")
  gjs = os.path.join(directory, f"{graph.name}.graph.json")
  # npz member names cannot hold every character of a TF tensor name: store by index.
  with open(npz + ".tmp", "wb") as f:
    np.savez(f, **{f"p{i:04d}": np.asarray(params[k], np.float32) for i, k in enumerate(keys)})
  with open(gjs + ".tmp", "w") as f:
    json.dump(doc, f)
  os.replace(npz + ".tmp", npz)
  os.replace(gjs + ".tmp", gjs)
  return npz


def _hashable(v):
  return tuple(_hashable(x) for x in v) if isinstance(v, list) else v


def load(directory: str, name: str) -> tuple[GraphModel, dict[str, np.ndarray]]:
  """Reads a model written by `save`. Raises FileNotFoundError when it is not there."""
  with open(os.path.join(directory, f"{name}.graph.json")) as f:
    doc = json.load(f)
  with np.load(os.path.join(directory, f"{name}.npz"), allow_pickle=False) as z:
    params = {k: z[f"p{i:04d}"] for i, k in enumerate(doc["params"])}
  nodes = tuple(Node(n, op, tuple(inp), tuple((k, _hashable(v)) for k, v in attrs))
                for n, op, inp, attrs in doc["nodes"])
  graph = GraphModel(doc["name"], nodes, tuple((k, _hashable(v)) for k, v in doc["static"]),
                     doc["input_name"], tuple(doc["input_shape"]), tuple(doc["outputs"]),
                     tuple(sorted(doc["metadata"].items())))
  return graph, params


# ---------------------------------------------------------------------------------------- ops


def _conv(node: Node, x, w, depthwise: bool = False):
  """Conv2D / DepthwiseConv2dNative, NHWC with HWIO (depthwise: H, W, C, multiplier) kernels."""
  if node.attr("data_format", "NHWC") != "NHWC":
    raise NotImplementedError(f"{node.name}: data_format {node.attr('data_format')}")
  strides = node.attr("strides", (1, 1, 1, 1))[1:3]
  dil = node.attr("dilations", (1, 1, 1, 1))[1:3]
  groups = 1
  if depthwise:
    h, kw, c, m = w.shape
    w = w.reshape(h, kw, 1, c * m)
    groups = c
  return jax.lax.conv_general_dilated(
      x, w.astype(x.dtype), strides, node.attr("padding"), rhs_dilation=dil,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def _prelu(x, alpha):
  return jnp.where(x >= 0, x, x * alpha.astype(x.dtype))


def _fused(node: Node, y, *extra):
  """The epilogue of _FusedConv2D / FusedDepthwiseConv2dNative / _FusedMatMul."""
  extra = list(extra)
  for op in node.attr("fused_ops", ()):
    if op == "BiasAdd":
      y = y + extra.pop(0).astype(y.dtype)
    elif op == "Relu":
      y = jax.nn.relu(y)
    elif op == "Relu6":
      y = jnp.clip(y, 0, 6)
    elif op == "Prelu":
      y = _prelu(y, extra.pop(0))
    elif op == "LeakyRelu":
      y = jnp.where(y >= 0, y, y * node.attr("alpha", 0.2))
    elif op == "Elu":
      y = jax.nn.elu(y)
    elif op == "Sigmoid":
      y = jax.nn.sigmoid(y)
    else:
      raise NotImplementedError(f"{node.name}: fused op {op}")
  return y


def _pool(node: Node, x, kind: str):
  ksize = (1,) + tuple(node.attr("ksize"))[1:3] + (1,)
  strides = (1,) + tuple(node.attr("strides"))[1:3] + (1,)
  padding = node.attr("padding")
  if kind == "max":
    # Concrete numpy init values: JAX then knows the monoid and can differentiate the pool.
    return jax.lax.reduce_window(x, np.array(-np.inf, x.dtype), jax.lax.max, ksize, strides,
                                 padding)
  total = jax.lax.reduce_window(x, np.array(0, x.dtype), jax.lax.add, ksize, strides, padding)
  # TF averages over the window's in-image pixels only (SAME padding is not counted).
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  count = jax.lax.reduce_window(ones, np.array(0, x.dtype), jax.lax.add, ksize, strides, padding)
  return total / count


def _conv_backprop_input(node: Node, sizes, w, dy):
  """Conv2DBackpropInput (transposed conv): exactly the input-gradient of the forward conv."""
  shape = (dy.shape[0],) + tuple(int(s) for s in np.asarray(sizes)[1:3]) + (w.shape[2],)
  _, vjp = jax.vjp(lambda x: _conv(node, x, w.astype(dy.dtype)), jnp.zeros(shape, dy.dtype))
  return vjp(dy)[0]


def _resize_bilinear(node: Node, x, size):
  if node.attr("align_corners", False) or not node.attr("half_pixel_centers", False):
    raise NotImplementedError(f"{node.name}: only half_pixel_centers bilinear resizing")
  h, w = (int(s) for s in np.asarray(size))
  return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), "linear", antialias=False)


def _axes(a) -> tuple[int, ...]:
  return tuple(int(i) for i in np.atleast_1d(np.asarray(a)))


def _matmul(node: Node, a, b):
  a = a.T if node.attr("transpose_a", False) else a
  b = b.T if node.attr("transpose_b", False) else b
  return a @ b.astype(a.dtype)


def _binary(fn):
  return lambda node, a, b: fn(jnp.asarray(a), jnp.asarray(b))


OPS: dict[str, Callable] = {
    "Identity": lambda node, x: x,
    "Conv2D": lambda node, x, w: _conv(node, x, w),
    "DepthwiseConv2dNative": lambda node, x, w: _conv(node, x, w, depthwise=True),
    "_FusedConv2D": lambda node, x, w, *e: _fused(node, _conv(node, x, w), *e),
    "FusedDepthwiseConv2dNative":
        lambda node, x, w, *e: _fused(node, _conv(node, x, w, depthwise=True), *e),
    "Conv2DBackpropInput": _conv_backprop_input,
    "_FusedMatMul": lambda node, a, b, *e: _fused(node, _matmul(node, a, b), *e),
    "MatMul": _matmul,
    "MaxPool": lambda node, x: _pool(node, x, "max"),
    "AvgPool": lambda node, x: _pool(node, x, "avg"),
    "Add": _binary(jnp.add),
    "AddV2": _binary(jnp.add),
    "AddN": lambda node, *xs: sum(xs[1:], xs[0]),
    "Sub": _binary(jnp.subtract),
    "Mul": _binary(jnp.multiply),
    "RealDiv": _binary(jnp.divide),
    "Maximum": _binary(jnp.maximum),
    "Minimum": _binary(jnp.minimum),
    "BiasAdd": _binary(jnp.add),
    "Abs": lambda node, x: jnp.abs(x),
    "Neg": lambda node, x: -x,
    "Square": lambda node, x: x * x,
    "Sqrt": lambda node, x: jnp.sqrt(x),
    "Rsqrt": lambda node, x: jax.lax.rsqrt(x),
    "Relu": lambda node, x: jax.nn.relu(x),
    "Relu6": lambda node, x: jnp.clip(x, 0, 6),
    "Prelu": lambda node, x, a: _prelu(x, a),
    "Sigmoid": lambda node, x: jax.nn.sigmoid(x),
    "Tanh": lambda node, x: jnp.tanh(x),
    "Softmax": lambda node, x: jax.nn.softmax(x, axis=-1),
    "Mean": lambda node, x, ax: jnp.mean(x, _axes(ax), keepdims=node.attr("keep_dims", False)),
    "Sum": lambda node, x, ax: jnp.sum(x, _axes(ax), keepdims=node.attr("keep_dims", False)),
    "Squeeze": lambda node, x: jnp.squeeze(x, node.attr("squeeze_dims") or None),
    "Reshape": lambda node, x, shape: jnp.reshape(x, tuple(int(s) for s in np.asarray(shape))),
    "Pad": lambda node, x, pads: jnp.pad(x, [tuple(int(v) for v in p) for p in np.asarray(pads)]),
    "ResizeBilinear": _resize_bilinear,
}
