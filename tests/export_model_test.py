"""Tests for export/export_model.py: signatures, self-containment, serving contract."""

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import predict_pb2

from dolg_tf import config as config_lib
from dolg_tf.export import versions
from dolg_tf.io import savedmodel_contract
from dolg_tf.model import checkpoint_restore
from tests import testutil

TINY = testutil.TINY_DOLG
# serve_encoded resizes to at most 80 pixels, then pools scales 0.5 and 1.
EXPORT_CONFIG = testutil.SMALL_EXPORT_CONFIG


def _image(height, width, seed):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, size=[height, width, 3], dtype=np.uint8)


def _reference_descriptors(model, image, scales):
  """The project's own multi-scale computation, written independently of the export."""
  per_scale = []
  for s in scales:
    size = [max(1, int(round(image.shape[0] * s))), max(1, int(round(image.shape[1] * s)))]
    resized = tf.image.resize(tf.cast(image, tf.float32)[None], size, method="bilinear")
    per_scale.append(model(resized, training=False)[0].numpy())
  per_scale = np.stack(per_scale)
  pooled = (per_scale / np.linalg.norm(per_scale, axis=1, keepdims=True)).mean(axis=0)
  return per_scale, pooled / np.linalg.norm(pooled)


class ExportModelTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # Shared and read-only: built and exported once per process (tests/testutil.py).
    cls.model = testutil.tiny_model("dolg")
    cls.export_dir = testutil.tiny_export("dolg", export_config=EXPORT_CONFIG)
    cls.base = os.path.dirname(cls.export_dir)
    cls.loaded = testutil.tiny_loaded("dolg", export_config=EXPORT_CONFIG)

  def test_tf_serving_layout_and_assets(self):
    self.assertEqual(self.export_dir, os.path.join(self.base, "1"))
    self.assertTrue(os.path.exists(os.path.join(self.export_dir, "saved_model.pb")))
    config = config_lib.load_model_config(
      os.path.join(self.export_dir, savedmodel_contract.CONFIG_ASSET)
    )
    self.assertEqual(config, TINY)
    self.assertEqual(versions.next_version(self.base), 2)
    self.assertEqual([d for d in os.listdir(self.base) if d.startswith(".tmp")], [])
    with self.assertRaises(FileExistsError):
      versions.export_saved_model(self.model, TINY, self.base, version=1)

  def test_serving_default_matches_project_descriptors(self):
    image = _image(45, 62, 0)
    scales = [0.7071, 1.0, 1.4142]
    out = self.loaded.signatures["serving_default"](
      input_image=tf.constant(image),
      input_scales=tf.constant(scales),
      input_global_scales_ind=tf.constant([0, 1, 2]),
    )
    per_scale, pooled = _reference_descriptors(self.model, image, scales)
    self.assertAllClose(out["global_descriptors"], per_scale, atol=1e-5)
    self.assertAllClose(out["global_descriptor"], pooled, atol=1e-5)
    subset = self.loaded.signatures["serving_default"](
      input_image=tf.constant(image),
      input_scales=tf.constant(scales),
      input_global_scales_ind=tf.constant([1]),
    )["global_descriptor"]
    self.assertAllClose(subset, per_scale[1] / np.linalg.norm(per_scale[1]), atol=1e-5)

  def test_serve_encoded_decodes_resizes_and_pools_in_graph(self):
    images = [_image(120, 90, 1), _image(50, 70, 2)]
    encoded = []
    for i, image in enumerate(images):
      buffer = io.BytesIO()
      Image.fromarray(image).save(buffer, format="PNG" if i == 0 else "BMP")
      encoded.append(buffer.getvalue())
    out = self.loaded.signatures["serve_encoded"](images=tf.constant(encoded))
    descriptors = out["global_descriptor"].numpy()
    self.assertEqual(descriptors.shape, (2, 16))
    # Image 0 is larger than max_image_size=80: resized to 80x60 first.
    resized = tf.image.resize(tf.cast(images[0], tf.float32), [80, 60]).numpy()
    _, expected0 = _reference_descriptors(self.model, resized, [0.5, 1.0])
    _, expected1 = _reference_descriptors(self.model, images[1], [0.5, 1.0])
    self.assertAllClose(descriptors[0], expected0, atol=1e-5)
    self.assertAllClose(descriptors[1], expected1, atol=1e-5)

  def test_fresh_process_with_only_tensorflow_reproduces_descriptors(self):
    image = _image(40, 33, 3)
    workdir = self.create_tempdir().full_path
    np.save(os.path.join(workdir, "image.npy"), image)
    script = textwrap.dedent(
      f"""
      import sys
      sys.path.append({os.path.dirname(os.path.dirname(tf.__file__))!r})
      import importlib.util, numpy as np, tensorflow as tf
      assert importlib.util.find_spec("dolg_tf") is None, "project code must not be importable"
      loaded = tf.saved_model.load({self.export_dir!r})
      out = loaded.signatures["serving_default"](
          input_image=tf.constant(np.load("image.npy")),
          input_scales=tf.constant([0.7071, 1.0, 1.4142]),
          input_global_scales_ind=tf.constant([0, 1, 2]))
      np.save("descriptor.npy", out["global_descriptor"].numpy())
      """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    # -S: no site-packages .pth hooks (the editable install of dolg_tf is one); the script
    # adds site-packages itself, for TensorFlow only.
    result = subprocess.run(
      [sys.executable, "-I", "-S", "-c", script],
      cwd=workdir,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
    )
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    _, expected = _reference_descriptors(self.model, image, [0.7071, 1.0, 1.4142])
    self.assertAllClose(np.load(os.path.join(workdir, "descriptor.npy")), expected, atol=1e-5)

  def test_saved_model_cli_lists_the_predict_signatures(self):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run(
      [cli, "show", "--dir", self.export_dir, "--all"],
      capture_output=True,
      text=True,
      timeout=300,
    )
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    for name in ("serving_default", "serve_encoded", "serve_global_batch"):
      self.assertIn(f"signature_def['{name}']", result.stdout)
    self.assertEqual(result.stdout.count("Method name is: tensorflow/serving/predict"), 3)
    for tensor in (
      "input_image",
      "input_images",
      "input_scales",
      "input_global_scales_ind",
      "images",
    ):
      self.assertIn(f"inputs['{tensor}']", result.stdout)

  def test_predict_requests_are_accepted_by_the_signatures(self):
    image = _image(30, 41, 4)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG")
    requests = {
      "serving_default": {
        "input_image": tf.make_tensor_proto(image),
        "input_scales": tf.make_tensor_proto(np.array([1.0], np.float32)),
        "input_global_scales_ind": tf.make_tensor_proto(np.array([0], np.int32)),
      },
      "serve_encoded": {"images": tf.make_tensor_proto([buffer.getvalue()])},
    }
    for signature_name, inputs in requests.items():
      request = predict_pb2.PredictRequest()
      request.model_spec.name = "dolg"
      request.model_spec.signature_name = signature_name
      for key, proto in inputs.items():
        request.inputs[key].CopyFrom(proto)
      # What TF Serving does with a request: match input names and dtypes, then run.
      request = predict_pb2.PredictRequest.FromString(request.SerializeToString())
      function = self.loaded.signatures[request.model_spec.signature_name]
      spec = function.structured_input_signature[1]
      self.assertEqual(set(request.inputs), set(spec))
      feed = {}
      for key, proto in request.inputs.items():
        value = tf.make_ndarray(proto)
        self.assertEqual(tf.as_dtype(value.dtype), spec[key].dtype, key)
        feed[key] = tf.constant(value)
      outputs = function(**feed)
      self.assertIn("global_descriptor", outputs)
      self.assertTrue(np.all(np.isfinite(outputs["global_descriptor"].numpy())))


class ExportFolderTest(tf.test.TestCase):
  def _dead_pid(self) -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid

  def test_temp_folders_of_dead_exports_are_removed_and_live_ones_kept(self):
    base = self.create_tempdir().full_path
    dead = versions.temp_export_dir(base, 1, pid=self._dead_pid())
    live = versions.temp_export_dir(base, 2, pid=os.getppid())
    other = os.path.join(base, ".tmp-notes")
    for folder in (dead, live, other):
      os.makedirs(os.path.join(folder, "variables"))
    export_dir = versions.export_saved_model(
      testutil.tiny_model("dolg"), TINY, base, export_config=EXPORT_CONFIG
    )
    self.assertEqual(export_dir, os.path.join(base, "1"))
    self.assertCountEqual(os.listdir(base), ["1", os.path.basename(live), ".tmp-notes"])
    self.assertEqual(versions.remove_stale_exports(base), [])
    self.assertEqual(versions.remove_stale_exports(os.path.join(base, "none")), [])

  def test_a_failed_export_leaves_no_folder(self):
    base = self.create_tempdir().full_path
    original = tf.saved_model.save

    def failing_save(module, path, signatures=None):
      original(module, path, signatures=signatures)
      raise OSError("disk full")

    tf.saved_model.save = failing_save
    try:
      with self.assertRaisesRegex(OSError, "disk full"):
        versions.export_saved_model(
          testutil.tiny_model("dolg"), TINY, base, export_config=EXPORT_CONFIG
        )
    finally:
      tf.saved_model.save = original
    self.assertEqual(os.listdir(base), [])

  def test_checkpoint_errors_name_the_checkpoint(self):
    logdir = self.create_tempdir().full_path
    config_lib.save_config(
      config_lib.ExperimentConfig(model=TINY.replace(embedding_dim=32)), logdir
    )
    prefix = tf.train.Checkpoint(model=testutil.tiny_model("dolg")).save(
      os.path.join(logdir, "checkpoints", "ckpt")
    )
    with self.assertRaisesRegex(
      checkpoint_restore.CheckpointMismatchError, f"checkpoint {prefix} does not fit the model"
    ):
      versions.export_from_checkpoint(logdir)
    with self.assertRaisesRegex(FileNotFoundError, f"--checkpoint: no checkpoint {logdir}/nope"):
      versions.export_from_checkpoint(logdir, checkpoint=f"{logdir}/nope")
    with self.assertRaisesRegex(FileNotFoundError, f"--logdir: no run folder {logdir}/x"):
      versions.export_from_checkpoint(f"{logdir}/x")
    self.assertFalse(os.path.exists(os.path.join(logdir, "export")))


if __name__ == "__main__":
  tf.test.main()
