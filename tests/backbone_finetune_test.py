"""End to end per keras.applications family: ImageNet .h5 -> fine-tuning -> SavedModel -> mAP.

For EfficientNet, EfficientNetV2 and ConvNeXt the test writes the backbone's
ImageNet weights file the way keras writes its `*_notop.h5` (keras'
`save_weights` of the application, random values), fine-tunes DOLG from it
with the trainer (train.imagenet_checkpoint), exports the last weights
(versions.export_saved_model), extracts a tiny synthetic retrieval benchmark
through the SavedModel (Extractor + pipeline, the shipped protos/dolg.pbtxt)
and scores it with the revisited protocol.

Each network is keras.applications' own, built smaller by keras' functional
builders (`EfficientNet(width, depth, ...)`, `EfficientNetV2(...)`,
`ConvNeXt(depths, projection_dims, ...)`: one block per stage, widths / 10)
so that the test takes seconds: the layer names, the cut at stride 16 / 32,
the .h5 layout and every code path are those of the full-size networks
(tests/keras_app_backbones_test.py checks the full-size ones' strides,
channels and .h5 files; benchmarks/finetune_backbones_benchmark.py runs them end to end).
"""

import os
import sys
import time
from unittest import mock

import h5py
import numpy as np
import tensorflow as tf
from absl.testing import parameterized
from google.protobuf import text_format

from dolg_tf import config as config_lib
from dolg_tf import protos, run_layout
from dolg_tf.data import synthetic_benchmark
from dolg_tf.export import versions
from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.extraction import pipeline, task_sources
from dolg_tf.io import config_io, datum_io, savedmodel_contract
from dolg_tf.keras_api import keras
from dolg_tf.model import keras_app_backbones
from dolg_tf.retrieval import evaluation as evaluation_lib
from dolg_tf.retrieval import retrieval_config
from dolg_tf.training import trainer as trainer_lib
from tests import testutil

FAMILIES = ("efficientnet_b0", "efficientnetv2_s", "convnext_tiny")


def tiny_application(name: str) -> keras.Model:
  """What keras_app_backbones.build_application builds, from `keras_tiny_application`.

  (ConvNeXt's depthwise convolutions as DepthwiseConv2D layers, as there.)
  """
  application = keras_tiny_application(name)
  if keras_app_backbones.family(name) == "convnext":
    return keras_app_backbones.depthwise_convolutions(application)
  return application


def keras_tiny_application(name: str) -> keras.Model:
  """keras.applications' network of `name`'s family, one block per stage, a tenth of the widths.

  Built as keras_app_backbones.build_application builds the full one (no top,
  weights=None, any input size, V2 / ConvNeXt without their preprocessing),
  with the full model's name (ConvNeXt's layer names start with it).
  """
  builder_name, family = keras_app_backbones.BUILDERS[name]
  module = sys.modules[getattr(keras.applications, builder_name).__module__]
  common = dict(include_top=False, weights=None, input_shape=(None, None, 3))
  if family == "efficientnet":
    return module.EfficientNet(0.1, 0.1, 224, model_name="efficientnetb0", **common)
  if family == "efficientnetv2":
    blocks = module.DEFAULT_BLOCKS_ARGS["efficientnetv2-s"]
    return module.EfficientNetV2(
      0.1, 0.1, 224, model_name="efficientnetv2-s", blocks_args=blocks,
      include_preprocessing=False, **common,
    )  # fmt: skip
  return module.ConvNeXt(
    depths=[1, 1, 1, 1],
    projection_dims=[8, 16, 32, 64],
    model_name="convnext_tiny",
    include_preprocessing=False,
    **common,
  )


def imagenet_application(name: str) -> keras.Model:
  """The tiny application as its ImageNet file is written: V1's input Normalization set."""
  application = keras_tiny_application(name)
  if name.startswith("efficientnet_"):
    # keras' V1 builder always has its input layers (our backbone starts after them).
    norm = next(x for x in application.layers if isinstance(x, keras.layers.Normalization))
    norm.set_weights([np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]) ** 2, 0])
  for layer in application.layers:  # non-trivial batch-norm statistics, as trained files have
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.moving_mean.assign(np.random.normal(0, 0.1, layer.moving_mean.shape))
      layer.moving_variance.assign(np.random.uniform(0.5, 1.5, layer.moving_variance.shape))
  return application


def file_values(path: str, application: keras.Model) -> list[list[np.ndarray]]:
  """Per layer of `application` with weights (input Normalization left out): the file's arrays.

  Read with h5py in keras' layout (`<layer>/weight_names`, in the layer's
  weight order), independently of keras_h5.
  """
  values = []
  with h5py.File(path, "r") as f:
    for layer in application.layers:
      if not layer.weights or isinstance(layer, keras.layers.Normalization):
        continue
      group = f[layer.name]
      names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
      values.append([np.asarray(group[n]) for n in names])
  return values


class BackboneFinetuneTest(parameterized.TestCase, tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.train_pattern, _, cls.num_classes = testutil.training_data(
      "backbone_finetune_data", views_per_class=4
    )
    cls.benchmark_dir = os.path.join(testutil.temp_root(), "backbone_finetune_benchmark")
    if not os.path.exists(os.path.join(cls.benchmark_dir, "gnd_synthetic.pkl")):
      synthetic_benchmark.write_retrieval_benchmark(
        cls.benchmark_dir,
        num_classes=cls.num_classes,
        queries_per_class=1,
        db_per_class=3,
        image_size=48,
        num_distractor_classes=1,
      )

  def _experiment(self, backbone: str, h5_path: str) -> config_lib.ExperimentConfig:
    return testutil.training_experiment(
      config_lib.ModelConfig(backbone=backbone, local_dim=8, embedding_dim=8, head_scale=4.0),
      self.train_pattern,
      self.num_classes,
      batch_size=4,
      max_steps=1,
      initial_lr=0.01,
      log_every=1,
      checkpoint_every=1,
      imagenet_checkpoint=h5_path,
    )

  def _extract_and_evaluate(self, export_dir: str, loaded, workdir: str):
    """Extracts the benchmark with the shipped dolg.pbtxt (one scale); (features dir, results)."""
    config = config_io.load_dolg_config(protos.shipped_config_path("dolg"))
    config.model_path = export_dir
    config.max_image_size = 64
    del config.image_scales[:]
    config.image_scales.append(1.0)
    config_path = os.path.join(workdir, "dolg.pbtxt")
    with open(config_path, "w") as f:
      f.write(text_format.MessageToString(config))
    features = os.path.join(workdir, "features")
    tasks = task_sources.tasks_from_paths(
      task_sources.list_images(os.path.join(self.benchmark_dir, "jpg"))
    )
    extractor = extractor_lib.Extractor(config, config_path, saved_model=loaded)
    summary = pipeline.run_extraction(extractor, tasks, features)
    self.assertEqual(summary.failed, 0)
    evaluation = evaluation_lib.evaluate(
      os.path.join(self.benchmark_dir, "gnd_synthetic.pkl"),
      features,
      features,
      config=retrieval_config.RetrievalConfig(suffix=config.global_descriptor_suffix),
    )
    return features, config.global_descriptor_suffix, evaluation.results, len(tasks)

  @parameterized.parameters(*FAMILIES)
  def test_imagenet_h5_to_evaluated_savedmodel(self, backbone):
    start = time.perf_counter()
    workdir = self.create_tempdir().full_path
    with mock.patch.object(keras_app_backbones, "build_application", tiny_application):
      keras.utils.set_random_seed(11)
      reference = imagenet_application(backbone)
      h5_path = os.path.join(workdir, f"{reference.name}_notop.h5")
      reference.save_weights(h5_path)
      expected = file_values(h5_path, reference)
      trainer = trainer_lib.Trainer(
        self._experiment(backbone, h5_path), run_layout.RunLayout(os.path.join(workdir, "run"))
      )
    # Every backbone weight is the file's value before training.
    layers = [layer for layer in trainer.model.backbone.network.layers if layer.weights]
    self.assertLen(layers, len(expected))
    for layer, values in zip(layers, expected, strict=True):
      self.assertLen(layer.weights, len(values), msg=layer.name)
      for variable, value in zip(layer.weights, values, strict=True):
        if backbone.startswith("convnext") and isinstance(layer, keras.layers.DepthwiseConv2D):
          if variable is layer.depthwise_kernel:  # keras' grouped Conv2D kernel [k, k, 1, C]
            value = np.transpose(value, (0, 1, 3, 2))
        self.assertAllEqual(variable, value, msg=variable.name)
    stem = layers[0].weights[0].numpy()
    metrics = trainer.train()
    self.assertEqual(trainer.step, 1)
    self.assertTrue(np.isfinite(metrics["loss"]))
    self.assertNotAllClose(layers[0].weights[0], stem)  # the backbone is fine-tuned
    # The export serves DOLG's serving_default (the same inputs as a ResNet's).
    export_dir = versions.export_saved_model(
      trainer.model,
      trainer.model_config,
      os.path.join(workdir, "export"),
      export_config=testutil.SMALL_EXPORT_CONFIG,
    )
    export_seconds = time.perf_counter() - start
    loaded = tf.saved_model.load(export_dir)
    serving = loaded.signatures[savedmodel_contract.SERVING_DEFAULT]
    self.assertCountEqual(serving.structured_input_signature[1], savedmodel_contract.GLOBAL_INPUTS)
    self.assertIn(savedmodel_contract.GLOBAL_DESCRIPTOR, serving.structured_outputs)
    image = np.random.default_rng(2).integers(0, 256, [40, 48, 3], dtype=np.uint8)
    served = serving(
      input_image=tf.constant(image),
      input_scales=tf.constant([1.0]),
      input_global_scales_ind=tf.constant([0]),
    )[savedmodel_contract.GLOBAL_DESCRIPTOR]
    # The served descriptor is the fine-tuned model's (L2-normalised) embedding.
    own = trainer.model(tf.constant(image, tf.float32)[None], training=False)[0]
    self.assertAllClose(served, tf.math.l2_normalize(own), atol=1e-5)
    features, suffix, results, count = self._extract_and_evaluate(export_dir, loaded, workdir)
    names = sorted(os.listdir(features))
    self.assertLen([n for n in names if n.endswith(suffix)], count)
    for name in [n for n in names if n.endswith(suffix)][:2]:
      with open(os.path.join(features, name), "rb") as f:
        descriptor = datum_io.parse_array(f.read())
      self.assertTrue(np.all(np.isfinite(descriptor)))
      self.assertAllClose(np.linalg.norm(descriptor), 1.0, atol=1e-5)
    for protocol in ("easy", "medium", "hard"):
      self.assertBetween(100 * results[protocol].mean_ap, 0.0, 100.0)
    print(
      f"{backbone}: fine-tune + export {export_seconds:.1f} s, "
      f"all {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
  tf.test.main()
