"""Tests for dolg_tf.experiments: every preset validates and builds; the published recipes
carry exactly the values their sources state (docs/RECIPES.md)."""

import os
import subprocess
import sys

import numpy as np
import tensorflow as tf
from absl import flags
from absl.testing import parameterized

from dolg_tf import config as config_lib
from dolg_tf import experiments
from dolg_tf import train as train_lib
from dolg_tf.model import builder

RECIPES = (
  "official_dolg_r101",
  "dolg_paper_512",
  "glr2021_effnet_b7_stage1",
  "glr2021_effnet_b7_stage2",
  "glr2021_effnet_b7_stage3",
  "glr2021_effnet_b5_stage3",
  "glr2021_effnet_b6_stage3",
  "delg_delf",
)


def _values(config, expected):
  """{'section.field': value} of `config` for the keys of `expected`."""
  out = {}
  for key in expected:
    section, field = key.split(".")
    out[key] = getattr(getattr(config, section), field)
  return out


class PresetTest(tf.test.TestCase, parameterized.TestCase):
  def _assert_values(self, name, expected):
    got = _values(experiments.get(name), expected)
    for key, value in expected.items():
      if isinstance(value, float):
        self.assertAllClose(got[key], value, rtol=0, atol=1e-12, msg=key)
      else:
        self.assertEqual(got[key], value, msg=key)

  def test_recipes_are_named(self):
    for name in RECIPES:
      self.assertIn(name, experiments.NAMES)

  @parameterized.parameters(*experiments.NAMES)
  def test_every_preset_validates_and_round_trips(self, name):
    config = experiments.get(name)
    config.validate()
    again = config_lib.ExperimentConfig.from_dict(config.as_dict())
    self.assertEqual(again.as_dict(), config.as_dict())

  def test_official_dolg_r101(self):
    # feymanpriv/DOLG configs/resnet101_delg_8gpu.yaml (line numbers of that file).
    self._assert_values(
      "official_dolg_r101",
      {
        "model.backbone": "resnet",  # l.2 MODEL.TYPE: resnet
        "model.backbone_depth": 101,  # l.3 DEPTH: 101
        "data.dataset_version": "gld_v2_clean",  # l.4 NUM_CLASSES: 81313
        "model.embedding_dim": 512,  # l.7 HEADS.REDUCTION_DIM: 512
        "model.head_margin": 0.15,  # l.8 MARGIN: 0.15
        "model.head_scale": 30.0,  # l.9 SCALE: 30
        # Its `Arcface` class is a CurricularFace (docs/TRAINING_PARITY.md).
        "model.head_type": "curricularface",
        "model.backbone_layout": "pycls",  # l.14 STRIDE_1X1: False (stride on the 3x3)
        "train.initial_lr": 0.01,  # l.18 BASE_LR: 0.01
        "train.lr_schedule": "cosine",  # l.19 LR_POLICY: cos
        "train.epochs": 100,  # l.22 MAX_EPOCH: 100
        "train.momentum": 0.9,  # l.23 MOMENTUM: 0.9
        "train.nesterov": True,  # l.24 NESTEROV: True
        "train.weight_decay": 1e-4,  # l.25 WEIGHT_DECAY: 0.0001
        "train.warmup_epochs": 5.0,  # l.26 WARMUP_EPOCHS: 5
        "train.batch_size": 64,  # l.30 TRAIN.BATCH_SIZE: 64 (total over the GPUs)
        "data.image_size": 224,  # l.31 TRAIN.IM_SIZE: 224
        # core/config.py: _C.OPTIM.WARMUP_FACTOR = 0.1 (not overridden by the yaml).
        "train.warmup_factor": 0.1,
        # pycls get_epoch_lr: the rate is set once per epoch.
        "train.lr_per_epoch": True,
        # optim.py construct_optimizer: torch.optim.SGD (its momentum buffer).
        "train.optimizer": "sgd_torch",
      },
    )
    config = experiments.get("official_dolg_r101")
    self.assertEqual(config.model.resolved_bn_epsilon, 1e-5)  # core/config.py BN.EPS 1e-5
    self.assertEqual(config.model.resolved_bn_momentum, 0.9)  # BN.MOM 0.1 (PyTorch form)

  def test_dolg_paper_512_differs_from_official_only_where_the_paper_does(self):
    paper = experiments.get("dolg_paper_512").as_dict()
    official = experiments.get("official_dolg_r101").as_dict()
    differing = {
      f"{section}.{key}"
      for section in paper
      for key in paper[section]
      if paper[section][key] != official[section][key]
    }
    # arXiv 2108.02927 section 4.1 as quoted in feymanpriv/DOLG issues #3 (512x512,
    # "the released weights: 512x512") and #9 (initial learning rate 0.05) and
    # dongkyunk/DOLG-pytorch issue #1 (batch 128 on 8 V100); ArcFace and the
    # multi-atrous module with dilations 3/6/9 as the paper's text (docs/TRAINING.md).
    self.assertEqual(
      differing,
      {
        "data.image_size",
        "train.batch_size",
        "train.initial_lr",
        "model.head_type",
        "model.use_multi_atrous",
        "model.atrous_dilations",
      },
    )
    self._assert_values(
      "dolg_paper_512",
      {
        "data.image_size": 512,
        "train.batch_size": 128,
        "train.initial_lr": 0.05,
        "model.head_type": "arcface",
        "model.use_multi_atrous": True,
        "model.atrous_dilations": (3, 6, 9),
      },
    )

  def _glr2021_common(self, name):
    # ChristofHenkel/kaggle-landmark-2021-1st-place: models/ch_mdl_dolg_efficientnet.py
    # (feature_dim_l_g = 1024, ArcMarginProduct_subcenter k=3, GeM), the configs'
    # cfg.embedding_size = 512, cfg.gem_p_trainable = True, cfg.loss =
    # 'adaptive_arcface', cfg.arcface_s = 45, cfg.warmup = 1, cfg.mixed_precision =
    # True; configs/default_config.py cfg.n_classes = 81313, cfg.schedule = "cosine",
    # cfg.arcface_m_x = 0.45, cfg.arcface_m_y = 0.05 (margins 0.05 .. 0.05 + 0.45),
    # cfg.optimizer = "Adam" (torch.optim.Adam: coupled weight_decay).
    self._assert_values(
      name,
      {
        "model.use_multi_atrous": True,
        "model.local_dim": 1024,
        "model.embedding_dim": 512,
        "model.gem_p_trainable": True,
        "model.head_type": "subcenter_arcface",
        "model.head_num_subcenters": 3,
        "model.head_scale": 45.0,
        "model.head_margin": 0.05,
        "model.head_margin_max": 0.5,
        "data.dataset_version": "gld_v2_clean",
        "train.lr_schedule": "cosine",
        "train.warmup_epochs": 1.0,
        "train.mixed_precision": "mixed_float16",
        "train.optimizer": "adam",
      },
    )

  def test_glr2021_b7_stage1(self):
    self._glr2021_common("glr2021_effnet_b7_stage1")
    # configs/cfg_ch_dolg_b7_step1.py, each value from its one assignment:
    self._assert_values(
      "glr2021_effnet_b7_stage1",
      {
        "model.backbone": "efficientnet_b7",  # cfg.backbone = "tf_efficientnet_b7_ns"
        "model.atrous_dilations": (3, 6, 9),  # cfg.dilations = [3,6,9]
        "train.initial_lr": 1e-4,  # cfg.lr = 0.0001
        "train.weight_decay": 1e-4,  # cfg.weight_decay = 1e-4
        "train.epochs": 10,  # cfg.epochs = 10
        "train.batch_size": 64,  # cfg.batch_size = 64
        "data.image_size": 256,  # cfg.img_size = (256,256)
      },
    )

  def test_glr2021_b7_stage2(self):
    self._glr2021_common("glr2021_effnet_b7_stage2")
    # configs/cfg_ch_dolg_b7_step2.py:
    self._assert_values(
      "glr2021_effnet_b7_stage2",
      {
        "model.backbone": "efficientnet_b7",  # cfg.backbone = "tf_efficientnet_b7_ns"
        "model.atrous_dilations": (3, 6, 9),  # cfg.dilations = [3,6,9]
        "train.initial_lr": 1e-4,  # cfg.lr = 0.0001
        "train.weight_decay": 1e-4,  # cfg.weight_decay = 1e-4
        "train.epochs": 40,  # cfg.epochs = 40 (cfg.stop_at = 29: no dolg_tf field)
        "train.batch_size": 20,  # cfg.batch_size = 20
        "data.image_size": 448,  # cfg.img_size = (448,448)
        # Starts from stage 1 (the step-wise approach of arXiv 2110.03786).
        "train.init_from": experiments.GLR2021_B7_RUNS[0],
      },
    )

  def test_glr2021_b7_stage3(self):
    self._glr2021_common("glr2021_effnet_b7_stage3")
    # configs/cfg_ch_dolg_b7_step3.py:
    self._assert_values(
      "glr2021_effnet_b7_stage3",
      {
        "model.backbone": "efficientnet_b7",  # cfg.backbone = "tf_efficientnet_b7_ns"
        "model.atrous_dilations": (3, 6, 9),  # cfg.dilations = [3,6,9]
        "train.initial_lr": 5e-5,  # cfg.lr = 0.00005
        "train.weight_decay": 1e-4,  # cfg.weight_decay = 1e-4
        "train.epochs": 15,  # cfg.epochs = 15
        "train.batch_size": 4,  # cfg.batch_size = 4 (cfg.grad_accumulation = 4.: no field)
        "data.image_size": 448,  # cfg.img_size = (448,448) (cfg.stride = (1,1): no field)
        "train.init_from": experiments.GLR2021_B7_RUNS[1],
      },
    )

  def test_glr2021_b5_stage3(self):
    self._glr2021_common("glr2021_effnet_b5_stage3")
    # configs/cfg_ch_dolg_b5_step3.py:
    self._assert_values(
      "glr2021_effnet_b5_stage3",
      {
        "model.backbone": "efficientnet_b5",  # cfg.backbone = "tf_efficientnet_b5_ns"
        "model.atrous_dilations": (6, 12, 18),  # cfg.dilations = [6,12,18]
        "train.initial_lr": 5e-5,  # cfg.lr = 0.00005
        # "# cfg.weight_decay = 1e-4" is commented out: default_config.py's 0.
        "train.weight_decay": 0.0,
        "train.epochs": 7,  # cfg.epochs = 7
        "train.batch_size": 10,  # cfg.batch_size = 10
        "data.image_size": 768,  # cfg.img_size = (768,768)
      },
    )

  def test_glr2021_b6_stage3(self):
    self._glr2021_common("glr2021_effnet_b6_stage3")
    # configs/cfg_ch_dolg_b6_step3.py:
    self._assert_values(
      "glr2021_effnet_b6_stage3",
      {
        "model.backbone": "efficientnet_b6",  # cfg.backbone = "tf_efficientnet_b6_ns"
        "model.atrous_dilations": (3, 6, 9),  # cfg.dilations = [3,6,9]
        "train.initial_lr": 1e-4,  # cfg.lr = 0.0001
        "train.weight_decay": 1e-4,  # cfg.weight_decay = 1e-4
        "train.epochs": 7,  # cfg.epochs = 7
        "train.batch_size": 10,  # cfg.batch_size = 10
        "data.image_size": 768,  # cfg.img_size = (768,768)
      },
    )

  def test_delg_delf(self):
    # tensorflow/models research/delf/delf/python/training/train.py, flag defaults
    # (each from its flags.DEFINE_* line), with --delg_global_features and
    # --dataset_version=gld_v2_clean as in training/README.md's DELG command.
    self._assert_values(
      "delg_delf",
      {
        "model.name": "delg",
        "model.backbone_depth": 50,  # delf_model / resnet50.ResNet50
        "model.backbone_layout": "delf",
        "model.block3_strides": True,  # 'block3_strides', True
        "model.gem_p": 3.0,  # 'delg_gem_power', 3.0
        "model.gem_p_trainable": False,
        "model.embedding_dim": 2048,  # 'delg_embedding_layer_dim', 2048
        "model.head_type": "arcface",
        "model.head_scale": 45.25,  # 'delg_scale_factor_init', 45.25
        "model.head_margin": 0.1,  # 'delg_arcface_margin', 0.1
        "model.delg_reduced_dim": 128,  # 'autoencoder_dimensions', 128
        "data.dataset_version": "gld_v2_clean",
        "data.image_size": 321,  # 'image_size', 321
        # datasets/googlelandmarks.py _DataAugmentationParams: area_range_min 0.08.
        "data.min_crop_area": 0.08,
        "train.initial_lr": 0.01,  # 'initial_lr', 0.01
        "train.batch_size": 32,  # 'batch_size', 32
        "train.max_steps": 500000,  # 'max_iters', 500000
        # _learning_rate_schedule: initial_lr * (1 - step / max_iters), no warm-up.
        "train.lr_schedule": "linear",
        "train.warmup_steps": 0,
        "train.warmup_epochs": 0.0,
        # DELF train.py: SGD(learning_rate=initial_lr, momentum=0.9); no decay term.
        "train.momentum": 0.9,
        "train.nesterov": False,
        "train.weight_decay": 0.0,
        "train.clip_norm": 10.0,  # clip_val = tf.constant(10.0)
        "train.lr_per_epoch": False,
      },
    )


class DolgTrainFlagsTest(tf.test.TestCase, parameterized.TestCase):
  def _config(self, *argv):
    flag_values = flags.FlagValues()
    train_lib.define_flags(flag_values)
    flag_values(["dolg-train", *argv])
    return train_lib.experiment_from_flags(flag_values)

  @parameterized.parameters(*RECIPES)
  def test_dolg_train_takes_every_recipe(self, name):
    config = self._config(f"--experiment={name}")
    expected = experiments.get(name)
    if expected.train.init_from:  # dolg-train makes the run folder absolute
      expected = config_lib.override(
        expected, {"train": {"init_from": os.path.abspath(expected.train.init_from)}}
      )
    self.assertEqual(config.as_dict(), expected.as_dict())

  def test_a_stage_starts_from_the_run_given(self):
    config = self._config("--experiment=glr2021_effnet_b7_stage2", "--init_from=/data/my_stage1")
    self.assertEqual(config.train.init_from, "/data/my_stage1")
    self.assertEqual(config.data.image_size, 448)

  def test_a_recipe_without_data_is_one_line_exit_2(self):
    result = subprocess.run(
      [sys.executable, "-m", "dolg_tf.train", "--experiment=official_dolg_r101"],
      capture_output=True,
      text=True,
      cwd=self.get_temp_dir(),
      env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__))),
      timeout=300,
    )
    self.assertEqual(result.returncode, 2, result.stderr)
    lines = result.stderr.strip().splitlines()
    self.assertLen(lines, 1, result.stderr)
    self.assertIn("official_dolg_r101 trains on TFRecords: give --train_file_pattern", lines[0])

  def test_unknown_experiment_is_refused(self):
    flag_values = flags.FlagValues()
    train_lib.define_flags(flag_values)
    with self.assertRaisesRegex(flags.IllegalFlagValueError, "official_dolg_r101"):
      flag_values(["dolg-train", "--experiment=official_dolg_r50"])


def _small(model_config):
  """The preset's model at a size that builds in seconds (same heads and branches)."""
  if model_config.backbone == "resnet":
    model_config = model_config.replace(backbone_depth=26, backbone_width_multiplier=0.25)
  else:  # B5-B7 take tens of seconds to build: the same family's B0.
    model_config = model_config.replace(backbone="efficientnet_b0")
  return model_config.replace(
    local_dim=32, embedding_dim=16, delg_reduced_dim=8, delg_attention_hidden=16
  )


def _distinct_small_models():
  """[(names, small ModelConfig)]: presets whose small models are equal are built once."""
  groups = {}
  for name in experiments.NAMES:
    config = _small(experiments.get(name).model)
    key = repr(sorted(config.as_dict().items()))
    groups.setdefault(key, ([], config))[0].append(name)
  return [(" ".join(names), config) for names, config in groups.values()]


class PresetModelTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters(*_distinct_small_models())
  def test_every_preset_builds_its_model_and_head(self, names, model_config):
    del names  # in the test id
    model_config.validate()
    num_classes = 5
    model = builder.build_model(model_config, image_size=64, num_classes=num_classes)
    head = builder.build_head(model_config, num_classes)
    images = tf.random.uniform([2, 64, 64, 3], 0, 255, seed=1)
    labels = tf.constant([0, 3])
    if model_config.name == "delg":
      embedding = model(images, training=True, return_intermediates=True)["global_embedding"]
    else:
      embedding = model(images, training=True)
    logits = head(embedding, labels, training=True)
    self.assertEqual(logits.shape, (2, num_classes))
    self.assertTrue(np.all(np.isfinite(logits.numpy())))

  def test_every_preset_is_built(self):
    built = " ".join(names for names, _ in _distinct_small_models()).split()
    self.assertCountEqual(built, experiments.NAMES)


if __name__ == "__main__":
  tf.test.main()
