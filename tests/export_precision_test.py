"""Tests for the export options: bfloat16 (export.precision, --precision) and freeze_weights."""

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from dolg_tf import config as config_lib
from dolg_tf.export import serving_graph
from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.io import savedmodel_contract
from dolg_tf.keras_api import keras
from tests import testutil

BF16_EXPORT = dataclasses.replace(testutil.SMALL_EXPORT_CONFIG, precision="bfloat16")


def _image(seed, height=64, width=48):
  return np.random.default_rng(seed).integers(0, 256, [height, width, 3], dtype=np.uint8)


def _config_file(folder, export_dir, local=False):
  path = os.path.join(folder, "config.pbtxt")
  with open(path, "w") as f:
    f.write(f'model_path: "{export_dir}"\nmax_image_size: 80\n')
    if local:
      f.write("use_local_features: true\nlocal_config { max_feature_num: 40 }\n")
  return path


class ExportPrecisionTest(parameterized.TestCase, tf.test.TestCase):
  def test_unknown_precision_is_a_config_error(self):
    with self.assertRaisesRegex(config_lib.ConfigError, "export.precision"):
      config_lib.ExportConfig(precision="float16")

  @parameterized.parameters("dolg", "delg")
  def test_bf16_export_keeps_dtypes_and_descriptors(self, name):
    fp32_dir = testutil.tiny_export(name, export_config=testutil.SMALL_EXPORT_CONFIG)
    bf16_dir = testutil.tiny_export(name, export_config=BF16_EXPORT)
    with open(os.path.join(bf16_dir, savedmodel_contract.CONFIG_ASSET)) as f:
      self.assertEqual(json.load(f)["export"]["precision"], "bfloat16")
    fp32 = testutil.tiny_loaded(name, export_config=testutil.SMALL_EXPORT_CONFIG)
    bf16 = testutil.tiny_loaded(name, export_config=BF16_EXPORT)
    self.assertEqual(set(fp32.signatures), set(bf16.signatures))
    for signature in bf16.signatures:
      with self.subTest(signature=signature):
        inputs = bf16.signatures[signature].structured_input_signature[1]
        expected = fp32.signatures[signature].structured_input_signature[1]
        self.assertEqual(
          {k: v.dtype for k, v in inputs.items()}, {k: v.dtype for k, v in expected.items()}
        )
        outputs = bf16.signatures[signature].structured_outputs
        for key, spec in fp32.signatures[signature].structured_outputs.items():
          self.assertEqual(outputs[key].dtype, spec.dtype, key)
    # The extractor reads both; bf16 descriptors stay close to fp32 ones
    # (untrained tiny weights: a loose bound; the benchmark measures real sizes).
    folder = self.create_tempdir().full_path
    local = name == "delg"
    ex32 = extractor_lib.Extractor.from_config_file(
      _config_file(folder, fp32_dir, local), saved_model=fp32
    )
    os.makedirs(os.path.join(folder, "b"))
    ex16 = extractor_lib.Extractor.from_config_file(
      _config_file(os.path.join(folder, "b"), bf16_dir, local), saved_model=bf16
    )
    for seed in range(3):
      a, b = ex32.extract(_image(seed)), ex16.extract(_image(seed))
      if local:
        a, b = a["global"], b["global"]
      self.assertEqual(b.dtype, np.float32)
      self.assertGreater(float(np.dot(a, b)), 0.99)

  @parameterized.product(name=["dolg", "delg"], precision=["float32", "bfloat16"])
  def test_the_serving_twin_computes_at_the_precision_with_folded_batch_norms(
    self, name, precision
  ):
    model = testutil.tiny_model(name)
    model_config = testutil.TINY_DOLG if name == "dolg" else testutil.TINY_DELG
    export_config = config_lib.ExportConfig(precision=precision)
    twin = serving_graph.serving_model(model, model_config, export_config)
    want_policy = "mixed_bfloat16" if precision == "bfloat16" else "float32"
    self.assertEqual(twin.dtype_policy.name, want_policy)
    self.assertEqual(keras.mixed_precision.global_policy().name, "float32")
    self.assertTrue(all(bn.folded for _, bn in twin.backbone.conv_bn_pairs()))
    self.assertFalse(any(bn.folded for _, bn in model.backbone.conv_bn_pairs()))
    images = tf.constant(np.stack([_image(seed, 64, 64) for seed in range(2)]).astype(np.float32))
    want, got = model(images, training=False), twin(images, training=False)
    self.assertEqual(got.dtype, tf.float32)
    if precision == "float32":
      self.assertAllClose(got, want, atol=1e-5)
    else:
      self.assertAllGreater(tf.reduce_sum(want * got, axis=-1), 0.999)
    unfolded = dataclasses.replace(export_config, fold_batch_norms=False)
    if precision == "float32":
      self.assertIs(serving_graph.serving_model(model, model_config, unfolded), model)
    else:
      twin = serving_graph.serving_model(model, model_config, unfolded)
      self.assertFalse(any(bn.folded for _, bn in twin.backbone.conv_bn_pairs()))
      for mine, theirs in zip(model.get_weights(), twin.get_weights()):
        self.assertAllEqual(mine, theirs)

  @parameterized.product(name=["dolg", "delg"], option=["freeze_weights", "serve_jit_compile"])
  def test_serving_options_serve_the_same_descriptors(self, name, option):
    plain = testutil.tiny_loaded(name, export_config=testutil.SMALL_EXPORT_CONFIG)
    options_config = dataclasses.replace(testutil.SMALL_EXPORT_CONFIG, **{option: True})
    frozen = testutil.tiny_loaded(name, export_config=options_config)
    self.assertNotEmpty(plain.model_variables)
    self.assertEqual(hasattr(frozen, "model_variables"), option != "freeze_weights")
    inputs = {
      savedmodel_contract.INPUT_SCALES: tf.constant([0.5, 1.0]),
      savedmodel_contract.INPUT_GLOBAL_SCALES_IND: tf.constant([0, 1]),
    }
    if name == "delg":
      inputs[savedmodel_contract.INPUT_MAX_FEATURE_NUM] = tf.constant(20)
      inputs[savedmodel_contract.INPUT_ABS_THRES] = tf.constant(-1e9)
    image = tf.constant(_image(0))
    want = plain.signatures[savedmodel_contract.SERVING_DEFAULT](input_image=image, **inputs)
    got = frozen.signatures[savedmodel_contract.SERVING_DEFAULT](input_image=image, **inputs)
    self.assertEqual(set(want), set(got))
    for key in want:
      self.assertAllClose(got[key], want[key], atol=1e-5, rtol=1e-5, msg=key)

  def test_export_command_refuses_an_unknown_precision(self):
    logdir = self.create_tempdir().full_path
    config_lib.save_config(config_lib.ExperimentConfig(), logdir)
    result = testutil.run_module(
      "dolg_tf.export.export_model", f"--logdir={logdir}", "--precision=half"
    )
    self.assertEqual(result.returncode, 2, result.stderr)
    lines = result.stderr.strip().splitlines()
    self.assertLen(lines, 1, result.stderr)
    self.assertIn("export.precision", lines[0])


if __name__ == "__main__":
  tf.test.main()
