"""Tests for train.init_from (training.warm_start) and train.lr_multipliers (param_groups)."""

import os
import types

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from dolg_tf import config as config_lib
from dolg_tf import run_layout, train
from dolg_tf.convert import artefacts, delf_checkpoint, official_dolg, official_structure
from dolg_tf.model import builder
from dolg_tf.training import param_groups, trainer, warm_start
from dolg_tf.utils import cli
from tests import delf_reference, testutil

MODELS = {"dolg": testutil.TINY_TRAIN_DOLG, "delg": testutil.TINY_TRAIN_DELG}
# Checkpoint keys this test compares: the network's and the margin head's values.
WEIGHT_PREFIXES = ("model/", "head/")


def _values(prefix: str) -> dict[str, np.ndarray]:
  """{key: value} of every model/ and head/ variable of a checkpoint."""
  reader = tf.train.load_checkpoint(prefix)
  return {
    k: reader.get_tensor(k)
    for k in reader.get_variable_to_shape_map()
    if k.startswith(WEIGHT_PREFIXES) and k.endswith(warm_start.VALUE_SUFFIX)
  }


def _perturb(run, seed: int) -> None:
  """Adds a distinct random offset to every variable of the model and head (BN statistics too)."""
  rng = np.random.default_rng(seed)
  for v in run.model.variables + run.head.variables:
    v.assign(v.numpy() + rng.normal(0.0, 0.1, v.shape).astype(np.float32))


def _write_checkpoint(prefix: str, values: dict[str, np.ndarray]) -> str:
  """A checkpoint bundle holding exactly `values` under their keys (no object graph)."""
  os.makedirs(os.path.dirname(prefix), exist_ok=True)
  names = sorted(values)
  tf.raw_ops.SaveV2(
    prefix=prefix,
    tensor_names=names,
    shape_and_slices=[""] * len(names),
    tensors=[tf.constant(values[n]) for n in names],
  )
  return prefix


class WarmStartTest(parameterized.TestCase, tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.train_pattern, _, cls.num_classes = testutil.training_data(
      "warm_start_data", views_per_class=4, num_shards=1
    )

  def setUp(self):
    super().setUp()
    testutil.log_absl_info(self)

  def _experiment(self, model="dolg", num_classes=None, **train_values):
    values = dict(batch_size=4, max_steps=1, log_every=1, checkpoint_every=100, export_at_end=False)
    values.update(train_values)
    return testutil.training_experiment(
      MODELS[model] if isinstance(model, str) else model,
      self.train_pattern,
      num_classes or self.num_classes,
      **values,
    )

  def _trainer(self, logdir, model="dolg", num_classes=None, **train_values):
    experiment = self._experiment(model, num_classes, **train_values)
    return trainer.Trainer(experiment, run_layout.RunLayout(logdir))

  def _source_run(self, model="dolg", num_classes=None) -> str:
    """A run folder whose one checkpoint holds perturbed weights (and optimizer slots)."""
    logdir = self.create_tempdir().full_path
    run = self._trainer(logdir, model, num_classes, seed=1)
    _perturb(run, seed=2)
    config_lib.save_config(run.experiment, run.layout.config)
    run.save_checkpoint()
    return logdir

  @parameterized.parameters("dolg", "delg")
  def test_variable_keys_are_the_keys_a_checkpoint_saves(self, name):
    model = builder.build_model(MODELS[name], image_size=32, num_classes=3)
    head = builder.build_head(MODELS[name], 3)
    head(tf.zeros([1, MODELS[name].embedding_dim]))
    prefix = tf.train.Checkpoint(model=model, head=head).save(
      os.path.join(self.create_tempdir().full_path, "ckpt")
    )
    keys = warm_start.variable_keys(model=model, head=head)
    self.assertCountEqual(keys, _values(prefix))
    self.assertLen(keys, len(model.variables) + len(head.variables))

  @parameterized.parameters("dolg", "delg")
  def test_every_variable_equals_the_source_and_training_starts_at_step_0(self, name):
    source = self._source_run(name)
    run = self._trainer(self.create_tempdir().full_path, name, init_from=source)
    self.assertIsNone(run.restored_from)
    self.assertEqual(run.reinitialised, {})
    self.assertEqual(run.step, 0)
    # Not the source's momentum: the optimizer's slots are as built (zeros).
    for slot in run.optimizer.variables:
      self.assertAllEqual(slot.numpy(), np.zeros(slot.shape))
    # Read back through a checkpoint of the run (not the loader's key map).
    ours = _values(run.save_checkpoint())
    expected = _values(os.path.join(source, "checkpoints", "ckpt-0"))
    self.assertCountEqual(ours, expected)
    for key, value in expected.items():
      self.assertAllEqual(ours[key], value, msg=key)

  @parameterized.parameters("dolg", "delg")
  def test_another_class_count_reinitialises_the_heads_and_says_so(self, name):
    source = self._source_run(name, num_classes=6)
    fresh = self._trainer(self.create_tempdir().full_path, name)
    fresh_values = _values(fresh.save_checkpoint())
    with self.assertLogs(level="WARNING") as logs:
      run = self._trainer(self.create_tempdir().full_path, name, init_from=source)
    ours = _values(run.save_checkpoint())
    expected = _values(os.path.join(source, "checkpoints", "ckpt-0"))
    classifiers = ["head/"] + (["model/attention_classifier/"] if name == "delg" else [])
    for key, value in ours.items():
      if key.startswith(tuple(classifiers)):
        self.assertAllEqual(value, fresh_values[key], msg=key)  # the fresh initialisation
      else:
        self.assertAllEqual(value, expected[key], msg=key)
    lines = [line for line in logs.output if "re-initialised" in line]
    self.assertLen(lines, 1)
    self.assertIn(
      f"head: head/kernel: [16, 6] in {source}/checkpoints/ckpt-0, [16, 4] here", lines[0]
    )
    self.assertIn("another number of classes", lines[0])
    self.assertEqual(
      set(run.reinitialised), {"head"} | ({"attention classifier"} if name == "delg" else set())
    )

  def test_a_missing_backbone_variable_is_an_error_naming_it(self):
    source = self._source_run()
    values = _values(os.path.join(source, "checkpoints", "ckpt-0"))
    missing = sorted(k for k in values if k.startswith("model/backbone/"))[3]
    del values[missing]
    prefix = _write_checkpoint(os.path.join(self.create_tempdir().full_path, "ckpt-7"), values)
    with self.assertRaisesRegex(warm_start.InitFromError, "do not load") as error:
      self._trainer(self.create_tempdir().full_path, init_from=prefix)
    message = str(error.exception)
    self.assertIn(prefix, message)
    self.assertIn(missing.removesuffix(warm_start.VALUE_SUFFIX) + " (not in the source)", message)
    self.assertNotIn("\n", message)

  def test_another_model_section_is_an_error_naming_the_fields(self):
    source = self._source_run()
    other = testutil.TINY_TRAIN_DOLG.replace(local_dim=8)
    with self.assertRaisesRegex(
      warm_start.InitFromError, r"model/fc_t/kernel \(\[256, 16\] there, \[256, 8\] here\)"
    ) as error:
      self._trainer(self.create_tempdir().full_path, other, init_from=source)
    self.assertIn("model section differs", str(error.exception))
    self.assertIn("model.local_dim", str(error.exception))

  def test_a_source_variable_this_model_lacks_is_an_error(self):
    source = self._source_run()
    values = _values(os.path.join(source, "checkpoints", "ckpt-0"))
    values["model/extra/kernel" + warm_start.VALUE_SUFFIX] = np.zeros([2], np.float32)
    prefix = _write_checkpoint(os.path.join(self.create_tempdir().full_path, "ckpt-1"), values)
    with self.assertRaisesRegex(warm_start.InitFromError, "not in this model: model/extra/kernel"):
      self._trainer(self.create_tempdir().full_path, init_from=prefix)

  def test_optimizer_slots_under_a_variable_path_are_not_model_variables(self):
    kernel = tf.Variable(tf.zeros([2, 3]))
    key = "model/fc/kernel" + warm_start.VALUE_SUFFIX
    slot = "model/fc/kernel/.OPTIMIZER_SLOT/optimizer/momentum" + warm_start.VALUE_SUFFIX
    keep, reinit = warm_start.plan({key: kernel}, {key: [2, 3], slot: [2, 3]}, "src")
    self.assertEqual((keep, reinit), ([key], {}))

  def test_resuming_with_another_init_from_is_no_config_change(self):
    logdir = self.create_tempdir().full_path
    layout = run_layout.RunLayout(logdir)
    experiment = self._experiment(init_from="/somewhere/run")
    config_lib.save_config(experiment, layout.config)
    moved = config_lib.override(experiment, {"train": {"init_from": "/elsewhere/run"}})
    train.check_resume(moved, layout)  # no error: a resumed run does not read it
    with self.assertRaisesRegex(cli.UserError, "train.lr_multipliers"):
      train.check_resume(
        config_lib.override(moved, {"train": {"lr_multipliers": "head=2"}}), layout
      )

  def test_no_checkpoint_is_an_error(self):
    empty = self.create_tempdir().full_path
    with self.assertRaisesRegex(warm_start.InitFromError, f"no checkpoint in {empty}"):
      self._trainer(self.create_tempdir().full_path, init_from=empty)
    with self.assertRaisesRegex(warm_start.InitFromError, "neither a folder nor a checkpoint"):
      self._trainer(self.create_tempdir().full_path, init_from=empty + "/ckpt-3")

  def test_a_resumed_run_keeps_its_own_checkpoint(self):
    source = self._source_run()
    logdir = self.create_tempdir().full_path
    first = self._trainer(logdir, init_from=source, max_steps=2)
    first.train()
    own = _values(first.latest_checkpoint())
    resumed = self._trainer(logdir, init_from=source, max_steps=4)
    self.assertEqual(resumed.restored_from, os.path.join(logdir, "checkpoints", "ckpt-2"))
    self.assertEqual(resumed.step, 2)
    now = _values(resumed.save_checkpoint())
    for key, value in own.items():
      self.assertAllEqual(now[key], value, msg=key)
    source_values = _values(os.path.join(source, "checkpoints", "ckpt-0"))
    kernels = [k for k in own if k.endswith("kernel" + warm_start.VALUE_SUFFIX)]
    self.assertTrue(any(not np.array_equal(now[k], source_values[k]) for k in kernels))

  def test_a_converter_output_folder_without_a_head(self):
    source = self._source_run()
    model = builder.build_model(MODELS["dolg"], image_size=32)
    tf.train.Checkpoint(model=model).read(
      os.path.join(source, "checkpoints", "ckpt-0")
    ).expect_partial()
    output = os.path.join(self.create_tempdir().full_path, "converted")
    converted = types.SimpleNamespace(model=model, config=MODELS["dolg"], head=None)
    artefacts.write_artefacts(converted, output, config_lib.ExportConfig())
    with self.assertLogs(level="WARNING") as logs:
      run = self._trainer(self.create_tempdir().full_path, init_from=output)
    self.assertIn("head: head/kernel: not in", " ".join(logs.output))
    ours = _values(run.save_checkpoint())
    for key, value in _values(os.path.join(source, "checkpoints", "ckpt-0")).items():
      if key.startswith("model/"):
        self.assertAllEqual(ours[key], value, msg=key)

  def test_a_converted_delf_checkpoint(self):
    tmp = self.create_tempdir().full_path
    reference = delf_reference.randomize(
      delf_reference.DelfDelg(
        num_classes=7,
        depth=26,
        width_multiplier=0.125,
        embedding_dim=16,
        reduced_dim=8,
        attention_hidden=8,
      ),
      seed=1,
    )
    prefix = delf_reference.save_delf_checkpoint(reference, os.path.join(tmp, "delf"))
    output = os.path.join(tmp, "converted")
    delf_checkpoint.convert_delf_checkpoint(prefix, output, import_head=True)
    model_config = config_lib.load_model_config(output)
    with self.assertLogs(level="WARNING") as logs:
      run = self._trainer(os.path.join(tmp, "run"), model_config, init_from=output)
    line = " ".join(logs.output)
    self.assertIn("head: head/kernel: [16, 7]", line)
    self.assertIn("attention classifier: model/attention_classifier/kernel: [128, 7]", line)
    ours = _values(run.save_checkpoint())
    converted = _values(os.path.join(output, "checkpoints", "ckpt-1"))
    loaded = [k for k in ours if not k.startswith(("head/", "model/attention_classifier/"))]
    self.assertNotEmpty(loaded)
    for key in loaded:
      self.assertAllEqual(ours[key], converted[key], msg=key)

  def test_a_converted_official_dolg_checkpoint(self):
    # The official state dict as .npz (the converter's torch-free input), with its
    # CurricularFace head over 7 classes.
    tmp = self.create_tempdir().full_path
    config = MODELS["dolg"].replace(head_type="curricularface", **official_structure.OFFICIAL_INPUT)
    official = builder.build_model(config, image_size=32)
    official_head = builder.build_head(config, 7)
    official_head(tf.zeros([1, config.embedding_dim]))
    rng = np.random.default_rng(5)
    for v in official.variables:  # non-trivial BatchNorm statistics, as official_dolg_test
      if "moving_variance" in v.name:
        v.assign(rng.uniform(0.5, 2.0, v.shape))
      elif "moving_mean" in v.name or "beta" in v.name:
        v.assign(rng.normal(0.0, 0.2, v.shape))
      else:  # not the values a fresh run of this seed draws
        v.assign(v.numpy() + rng.normal(0.0, 0.01, v.shape).astype(np.float32))
    npz = os.path.join(tmp, "official.npz")
    np.savez(npz, **official_dolg.official_state_dict(official, official_head))
    output = os.path.join(tmp, "converted")
    official_dolg.convert_official_checkpoint(npz, output, import_head=True)
    model_config = config_lib.load_model_config(output)
    with self.assertLogs(level="WARNING") as logs:
      run = self._trainer(os.path.join(tmp, "run"), model_config, init_from=output)
    self.assertIn("head: head/kernel: [16, 7]", " ".join(logs.output))
    self.assertEqual(set(run.reinitialised), {"head"})
    ours = _values(run.save_checkpoint())
    converted = _values(os.path.join(output, "checkpoints", "ckpt-1"))
    model_keys = [k for k in converted if k.startswith("model/")]
    self.assertLen(model_keys, len(run.model.variables))
    for key in model_keys:
      self.assertAllEqual(ours[key], converted[key], msg=key)
    # The network is the official one: equal descriptors.
    images = tf.random.stateless_uniform([2, 40, 40, 3], [1, 2], 0.0, 255.0)
    self.assertAllClose(run.model(images), official(images), atol=1e-5)

  def _command(self, logdir, *extra):
    model_file = config_lib.save_model_config(MODELS["dolg"], self.create_tempdir().full_path)
    return testutil.run_module(
      "dolg_tf.train",
      "--experiment=dolg_gldv2",
      f"--config_file={model_file}",
      f"--train_file_pattern={self.train_pattern}",
      "--dataset_version=synthetic",
      f"--num_classes={self.num_classes}",
      f"--logdir={logdir}",
      "--batch_size=4",
      "--image_size=32",
      "--max_steps=1",
      "--export_at_end=false",
      *extra,
    )

  def test_command_trains_from_a_run_with_multipliers(self):
    source = self._source_run()
    result = self._command(
      self.create_tempdir().full_path,
      f"--init_from={source}",
      "--lr_multipliers=backbone=0.5,head=2",
    )
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertRegex(result.stderr, r"Initialised \d+ variables from .*ckpt-0")

  def test_command_errors_are_one_line(self):
    logdir = self.create_tempdir().full_path
    missing = os.path.join(logdir, "nowhere")
    cases = [
      ((f"--init_from={missing}",), "train.init_from: .*nowhere is neither a folder"),
      (("--init_from=a", "--imagenet_checkpoint=b"), "train.init_from and train.imagenet_"),
      (("--lr_multipliers=trunk=2",), "train.lr_multipliers: 'trunk=2' is not <part>="),
      (("--lr_multipliers=head=0",), "train.lr_multipliers: head='0' must be a positive"),
    ]
    for args, pattern in cases:
      with self.subTest(args[0]):
        testutil.assert_one_line_error(self, "train", self._command(logdir, *args), pattern)


MULTIPLIERS = {"backbone": 0.5, "local": 2.0, "global": 0.25, "head": 4.0}


class LrMultipliersTest(parameterized.TestCase, tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.train_pattern, _, cls.num_classes = testutil.training_data(
      "warm_start_data", views_per_class=4, num_shards=1
    )

  def _trainer(self, model, **train_values):
    values = dict(
      batch_size=4,
      max_steps=1,
      log_every=1,
      checkpoint_every=100,
      export_at_end=False,
      lr_schedule="constant",
      initial_lr=0.05,
    )
    values.update(train_values)
    experiment = testutil.training_experiment(model, self.train_pattern, self.num_classes, **values)
    return trainer.Trainer(experiment, run_layout.RunLayout(self.create_tempdir().full_path))

  def test_scale_gradients_by_hand(self):
    slices = tf.IndexedSlices(tf.constant([[3.0]]), tf.constant([1]), tf.constant([2, 1]))
    dense, none, sparse, same = param_groups.scale_gradients(
      [tf.constant([1.0, -2.0]), None, slices, tf.constant([5.0])], [0.5, 2.0, 4.0, 1.0]
    )
    self.assertAllEqual(dense, [0.5, -1.0])
    self.assertIsNone(none)
    self.assertAllEqual(sparse.values, [[12.0]])
    self.assertAllEqual(sparse.indices, [1])
    self.assertAllEqual(same, [5.0])

  @parameterized.parameters("dolg", "delg")
  def test_every_trainable_variable_is_in_one_named_part(self, name):
    config = MODELS[name].replace(use_multi_atrous=True) if name == "dolg" else MODELS[name]
    model = builder.build_model(config, image_size=32, num_classes=3)
    head = builder.build_head(config, 3)
    head(tf.zeros([1, config.embedding_dim]))
    variables = model.trainable_variables + head.trainable_variables
    parts = param_groups.part_of_variables(model, head, variables)
    by_part = {p: {v.ref() for v, q in zip(variables, parts) if q == p} for p in MULTIPLIERS}
    self.assertEqual(by_part["backbone"], {v.ref() for v in model.backbone.trainable_variables})
    heads = head.trainable_variables + (
      model.attention_classifier.trainable_variables if name == "delg" else []
    )
    self.assertEqual(by_part["head"], {v.ref() for v in heads})
    local = (
      model.multi_atrous.trainable_variables + model.attention.trainable_variables
      if name == "dolg"
      else model.autoencoder.trainable_variables + model.attention.trainable_variables
    )
    self.assertEqual(by_part["local"], {v.ref() for v in local})
    global_layers = (
      (model.pool_g, model.fc_t, model.fc) if name == "dolg" else (model.pool, model.whitening)
    )
    self.assertEqual(
      by_part["global"], {v.ref() for layer in global_layers for v in layer.trainable_variables}
    )

  @parameterized.parameters(("dolg", 0.0), ("dolg", 0.9), ("delg", 0.0))
  def test_one_sgd_step_moves_each_part_by_its_multiplier(self, name, momentum):
    text = ",".join(f"{k}={v}" for k, v in MULTIPLIERS.items())
    plain = self._trainer(MODELS[name], momentum=momentum)
    scaled = self._trainer(MODELS[name], momentum=momentum, lr_multipliers=text)
    variables = plain.trainable_variables
    before = [v.numpy().astype(np.float64) for v in variables]
    for a, b in zip(before, scaled.trainable_variables):
      self.assertAllEqual(a, b.numpy())  # the same start (same seed)
    plain.train()
    scaled.train()
    parts = param_groups.part_of_variables(plain.model, plain.head, variables)
    moved = set()
    for start, part, a, b in zip(before, parts, variables, scaled.trainable_variables):
      update = a.numpy() - start
      expected = MULTIPLIERS[part] * update
      # float32 weights: each difference is exact to about 1 ulp of the weight.
      ulp = np.spacing(np.maximum(np.abs(start), np.abs(b.numpy())).astype(np.float32))
      error = np.abs((b.numpy() - start) - expected)
      self.assertTrue(np.all(error <= 2 * ulp * max(1.0, MULTIPLIERS[part])), msg=a.name)
      if np.any(update != 0):
        moved.add(part)
    self.assertEqual(moved, set(MULTIPLIERS))


if __name__ == "__main__":
  tf.test.main()
