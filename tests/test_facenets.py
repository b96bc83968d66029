"""Face networks: the TF.js graph runner (tiny synthetic graphs; the real networks against TF.js
in node on real face crops), fetching/caching, and the preprocessing wrappers."""
import base64
import json
import os
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vasa_jax.errors import VasaInputError
from vasa_jax.facenets import store, tfjs

TFJS_VERSION = "4.22.0"
REFERENCE_JS = os.path.join(os.path.dirname(tfjs.__file__), "tfjs_reference.js")


# ------------------------------------------------------------------------- a tiny graph model


def _attr_s(text):
  return {"s": base64.b64encode(text.encode()).decode()}


def _ints(*v):
  return {"list": {"i": [str(i) for i in v]}}


def _write_tiny_model(directory, rng):
  """A graph with conv+bias+relu (float16-quantized kernel), depthwise, prelu (uint8), maxpool,
  mean and reshape; returns (model.json path, numpy weights as dequantized)."""
  w_conv = rng.normal(size=(3, 3, 3, 4)).astype(np.float16)
  b_conv = rng.normal(size=(4,)).astype(np.float32)
  w_dw = rng.normal(size=(3, 3, 4, 1)).astype(np.float32)
  q_alpha = np.array([0, 64, 128, 255], np.uint8)
  scale, lo = 0.01, -0.5
  shape = np.array([-1, 4], np.int32)
  axes = np.array([1, 2], np.int32)
  blob = b"".join([w_conv.tobytes(), b_conv.tobytes(), w_dw.tobytes(), q_alpha.tobytes(),
                   shape.tobytes(), axes.tobytes()])
  with open(os.path.join(directory, "tiny.bin"), "wb") as f:
    f.write(blob)
  conv_attrs = {"padding": _attr_s("SAME"), "strides": _ints(1, 2, 2, 1),
                "data_format": _attr_s("NHWC"), "dilations": _ints(1, 1, 1, 1),
                "fused_ops": {"list": {"s": [base64.b64encode(b).decode()
                                             for b in (b"BiasAdd", b"Relu")]}}}
  nodes = [
      {"name": "x", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": [
          {"size": "-1"}, {"size": "8"}, {"size": "8"}, {"size": "3"}]}}}},
      {"name": "conv", "op": "_FusedConv2D", "input": ["x", "w_conv", "b_conv"],
       "attr": conv_attrs},
      {"name": "dw", "op": "DepthwiseConv2dNative", "input": ["conv", "w_dw"],
       "attr": {"padding": _attr_s("SAME"), "strides": _ints(1, 1, 1, 1)}},
      {"name": "act", "op": "Prelu", "input": ["dw", "alpha"]},
      {"name": "pool", "op": "MaxPool", "input": ["act"],
       "attr": {"padding": _attr_s("VALID"), "ksize": _ints(1, 2, 2, 1),
                "strides": _ints(1, 2, 2, 1)}},
      {"name": "mean", "op": "Mean", "input": ["pool", "axes"], "attr": {"keep_dims": {"b": False}}},
      {"name": "out", "op": "Reshape", "input": ["mean", "shape"]},
  ] + [{"name": n, "op": "Const"} for n in ("w_conv", "b_conv", "w_dw", "alpha", "shape", "axes")]
  manifest = [{"paths": ["tiny.bin"], "weights": [
      {"name": "w_conv", "shape": [3, 3, 3, 4], "dtype": "float32",
       "quantization": {"dtype": "float16"}},
      {"name": "b_conv", "shape": [4], "dtype": "float32"},
      {"name": "w_dw", "shape": [3, 3, 4, 1], "dtype": "float32"},
      {"name": "alpha", "shape": [4], "dtype": "float32",
       "quantization": {"dtype": "uint8", "scale": scale, "min": lo}},
      {"name": "shape", "shape": [2], "dtype": "int32"},
      {"name": "axes", "shape": [2], "dtype": "int32"}]}]
  path = os.path.join(directory, "tiny.json")
  with open(path, "w") as f:
    json.dump({"format": "graph-model", "generatedBy": "test", "convertedBy": "test",
               "modelTopology": {"node": nodes}, "weightsManifest": manifest}, f)
  alpha = q_alpha.astype(np.float32) * np.float32(scale) + np.float32(lo)
  return path, dict(w_conv=w_conv.astype(np.float32), b_conv=b_conv, w_dw=w_dw, alpha=alpha)


def _tiny_expected(x, w):
  dn = ("NHWC", "HWIO", "NHWC")
  y = jax.lax.conv_general_dilated(x, w["w_conv"], (2, 2), "SAME", dimension_numbers=dn)
  y = jax.nn.relu(y + w["b_conv"])
  y = jax.lax.conv_general_dilated(y, w["w_dw"].reshape(3, 3, 1, 4), (1, 1), "SAME",
                                   dimension_numbers=dn, feature_group_count=4)
  y = jnp.where(y >= 0, y, y * w["alpha"])
  y = y.reshape(y.shape[0], 2, 2, 2, 2, 4).max(axis=(2, 4))
  return y.mean(axis=(1, 2))


@pytest.fixture
def tiny_model(tmp_path):
  path, weights = _write_tiny_model(str(tmp_path), np.random.default_rng(0))
  graph, params = tfjs.read_graph_model(path)
  return graph, params, weights


def test_runner_matches_hand_written_graph(tiny_model):
  graph, params, weights = tiny_model
  assert set(params) == {"w_conv", "b_conv", "w_dw", "alpha"}  # int consts stay static
  np.testing.assert_allclose(params["alpha"], weights["alpha"], rtol=1e-6)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 3)), jnp.float32)
  out = jax.jit(graph.apply)(params, x)
  assert out.shape == (2, 4)
  np.testing.assert_allclose(out, _tiny_expected(x, weights), rtol=1e-5, atol=1e-5)
  inner = graph.apply(params, x, outputs=["conv", "out"])
  assert inner["conv"].shape == (2, 4, 4, 4) and inner["out"].shape == (2, 4)


def test_runner_grad_vmap_bfloat16_and_storage(tiny_model, tmp_path):
  graph, params, weights = tiny_model
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 3)), jnp.float32)
  gx = jax.grad(lambda v: graph.apply(params, v).sum())(x)
  gx_ref = jax.grad(lambda v: _tiny_expected(v, weights).sum())(x)
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-5)
  gp = jax.grad(lambda p: graph.apply(p, x).sum())(params)
  assert float(jnp.abs(gp["w_conv"]).sum()) > 0
  stacked = jnp.stack([x, 2 * x])  # (2, B, 8, 8, 3)
  vm = jax.vmap(lambda v: graph.apply(params, v))(stacked)
  np.testing.assert_allclose(vm[1], graph.apply(params, 2 * x), rtol=1e-5, atol=1e-6)
  bf = graph.apply(params, x, dtype=jnp.bfloat16)
  assert bf.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(bf, np.float32), graph.apply(params, x), rtol=0.05,
                             atol=0.05)
  tfjs.save(graph, params, str(tmp_path / "store"))
  graph2, params2 = tfjs.load(str(tmp_path / "store"), "tiny")
  assert graph2 == graph and hash(graph2) == hash(graph)
  np.testing.assert_array_equal(graph2.apply(params2, x), graph.apply(params, x))


def test_unknown_op_is_named(tmp_path):
  path, _ = _write_tiny_model(str(tmp_path), np.random.default_rng(0))
  spec = json.load(open(path))
  spec["modelTopology"]["node"][3]["op"] = "Erf"
  json.dump(spec, open(path, "w"))
  with pytest.raises(VasaInputError, match="Erf"):
    tfjs.read_graph_model(path)


def test_missing_nets_name_the_fetch_command(tmp_path):
  assert not store.available(directory=str(tmp_path))
  with pytest.raises(store.FaceNetsMissing, match="vasa-jax fetch-face-nets"):
    store.load("mobilefacenet", str(tmp_path), why="eval CSIM")


def test_fetch_rejects_a_tarball_with_another_hash(tmp_path):
  bad = tmp_path / "human-models.tgz"
  bad.write_bytes(b"not the package")
  with pytest.raises(VasaInputError, match="integrity"):
    store.fetch(str(tmp_path / "out"), tarball=str(bad))
  assert not (tmp_path / "out").exists()  # nothing half-written


def test_integrity_format(tmp_path):
  f = tmp_path / "a"
  f.write_bytes(b"abc")
  # `printf abc | openssl dgst -sha512 -binary | base64`
  assert store.integrity_of(str(f)).startswith("sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05")


# ------------------------------------------------------------------ the real networks (fetched)


@pytest.fixture(scope="module")
def nets_dir():
  if not store.available():
    pytest.skip(f"face networks not fetched into {store.cache_dir()}: run `vasa-jax "
                f"fetch-face-nets`")
  return store.cache_dir()


@pytest.fixture(scope="module")
def real_crops(shared_data):
  """Head crops (256x256) of four people from ../shared/data, one frame each."""
  from vasa_jax.data import face_crop, media
  clips = ["clips/styletalk__samples_source_video_video_Obama_clip1.mp4",
           "clips/styletalk__samples_source_video_video_andrew_clip_1.mp4",
           "clips/EAMM__test_crop_M030_sad_3_001.mp4",
           "clips/SadTalker__examples_ref_video_WDA_AlexandriaOcasioCortez_000.mp4"]
  analyzer, crops, landmarks = face_crop.FaceAnalyzer(), [], []
  for clip in clips:
    for i, frame in enumerate(media.iter_video_frames(str(shared_data / clip), fps=25,
                                                      max_side=720)):
      if i == 10:
        break
    fc = face_crop.crop_image(frame, 256, analyzer=analyzer, source=clip)
    crops.append(fc.image)
    landmarks.append(fc.landmarks[:468, :2] / 256)
  return np.stack(crops), np.stack(landmarks)


@pytest.fixture(scope="module")
def tfjs_node_modules(tmp_path_factory):
  """node_modules holding @tensorflow/tfjs (pure-JS CPU backend), installed once per cache."""
  if shutil.which("node") is None or shutil.which("npm") is None:
    pytest.skip("node/npm not installed: the TF.js reference run needs them (apt-get install npm)")
  cache = os.environ.get("VASA_TFJS_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                          "vasa-jax", "tfjs")
  modules = os.path.join(cache, "node_modules")
  if not os.path.isdir(os.path.join(modules, "@tensorflow", "tfjs")):
    os.makedirs(cache, exist_ok=True)
    proc = subprocess.run(["npm", "install", "--prefix", cache, "--no-save",
                           f"@tensorflow/tfjs@{TFJS_VERSION}"], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
      pytest.skip(f"npm install @tensorflow/tfjs failed (offline?): {proc.stderr[-300:]}")
  return modules


def _tfjs_reference(model_json, x, modules, tmp_path, outputs=()):
  inp, out = tmp_path / "in.bin", tmp_path / "out.json"
  np.ascontiguousarray(x, np.float32).tofile(inp)
  proc = subprocess.run(["node", REFERENCE_JS, model_json, str(inp), ",".join(map(str, x.shape)),
                         str(out), *outputs], capture_output=True, text=True, check=False,
                        env={**os.environ, "NODE_PATH": modules})
  assert proc.returncode == 0, proc.stderr[-2000:]
  res = json.load(open(out))
  return {k: np.frombuffer(base64.b64decode(v["data"]), np.float32).reshape(v["shape"])
          for k, v in res.items()}


@pytest.mark.parametrize("name", store.MODELS)
def test_networks_match_tfjs_on_real_faces(name, nets_dir, real_crops, tfjs_node_modules,
                                           tmp_path):
  """Each converted network equals TF.js (node, CPU backend) on the face windows it is used on:
  cosine >= 0.999 and relative error <= 1e-3 for every output."""
  from vasa_jax.facenets import nets as nets_lib
  graph, params = tfjs.load(nets_dir, name)
  crops = jnp.asarray(real_crops[0][:2], jnp.float32) / 127.5 - 1  # two people keep it short
  size = graph.input_shape[0]
  if name == "mobilefacenet":
    mesh_nets = nets_lib.FaceNets.load(("facemesh",), nets_dir)
    mesh, _ = nets_lib.face_mesh(mesh_nets, crops)
    x = nets_lib.align_faces(crops, mesh, size)
  elif name == "emotion":
    x = nets_lib.crop_window(crops, size, *nets_lib.WINDOWS["emotion"]).mean(-1, keepdims=True)
  elif name == "facemesh":
    x = (nets_lib.crop_window(crops, size, *nets_lib.WINDOWS["facemesh"]) + 1) / 2
  else:
    x = jax.image.resize((crops + 1) / 2, (crops.shape[0], size, size, 3), "linear")
  x = np.asarray(x, np.float32)
  # The selfie graph was exported with batch 1 (TF.js checks it): one image there.
  batches = [x[1:]] if name == "selfie" else [x]
  for xb in batches:
    ref = _tfjs_reference(os.path.join(nets_dir, "tfjs", f"{name}.json"), xb, tfjs_node_modules,
                          tmp_path)
    ours = jax.jit(lambda p, v: graph.apply(p, v, outputs=list(ref)))(params, xb)
    for key, want in ref.items():
      got = np.asarray(ours[key]).reshape(want.shape)
      cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
      rel = float(np.linalg.norm(got - want) / np.linalg.norm(want))
      assert cos >= 0.999 and rel <= 1e-3, (name, key, cos, rel)


@pytest.mark.slow  # ~3 min on the shared 2-core CPU (eager ops at 256x256 + a backward pass)
def test_wrappers_on_real_faces(nets_dir, real_crops):
  """Mesh agrees with the .tflite mesh of face_crop; identity separates people; all jit."""
  from vasa_jax.facenets import nets as nets_lib
  nets = nets_lib.FaceNets.load(directory=nets_dir)
  crops = jnp.asarray(real_crops[0], jnp.float32) / 127.5 - 1
  mesh, flag = jax.jit(lambda v: nets_lib.face_mesh(nets, v))(crops)
  err = np.linalg.norm(np.asarray(mesh)[:, :, :2] - real_crops[1], axis=-1).mean(1)
  assert np.all(err < 0.015) and np.all(np.asarray(flag) > 0.9), (err, flag)
  emb = nets_lib.identity_embedding(nets, crops, mesh=mesh)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-4)
  # The same face, shifted and slightly darkened, stays closer than any other person.
  moved = jnp.roll(crops, 6, axis=2) * 0.9
  emb2 = nets_lib.identity_embedding(nets, moved)
  sims = np.asarray(nets_lib.identity_cosine(emb2[:, None], emb[None]))  # (4, 4)
  assert np.all(np.argmax(sims, axis=1) == np.arange(4)), sims
  probs = nets_lib.emotion_probs(nets, crops)
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-4)
  fg = nets_lib.foreground_mask(nets, crops)
  assert fg.shape == (4, 256, 256, 1) and float(fg[:, 128, 128].min()) > 0.9
  small = jax.image.resize(crops[:1], (1, 128, 128, 3), "linear")  # a cheap backward pass
  g = jax.grad(lambda v: nets_lib.identity_embedding(nets, v, mesh=mesh[:1])[:, 0].sum())(small)
  assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).sum()) > 0
