"""dolg_tf beside a user's Keras 3: its own Keras 2, nothing of theirs changed.

A fresh interpreter (no TF_USE_LEGACY_KERAS) imports Keras 3 and TensorFlow,
trains a small Keras 3 model, then imports dolg_tf, trains a tiny DOLG for two
steps in mixed precision, exports it at the end of training and again from the
checkpoint, and round-trips a checkpoint. Checked: every variable of the model
is in the checkpoint and comes back; both exports give the same descriptors;
the environment, `tf.keras`, Keras 3's dtype policy and the user's model are
as they were. On the design card's stack (TF 2.15, no Keras 3) the dolg_tf half
runs alone.
"""

import json
import os
import subprocess
import sys

import tensorflow as tf

_SCRIPT = r"""
import json, os, sys
import numpy as np
import tensorflow as tf
try:
  import keras
except ImportError:
  keras = None
keras3 = keras is not None and keras.__version__.startswith("3.")
report = {"keras3": keras3, "legacy_env_before": os.environ.get("TF_USE_LEGACY_KERAS")}
x = np.linspace(0.0, 1.0, 32, dtype=np.float32).reshape(8, 4)
if keras3:
  keras.utils.set_random_seed(0)
  user_model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
  user_model.compile(optimizer="sgd", loss="mse")
  user_model.fit(x, np.ones((8, 3), np.float32), epochs=1, verbose=0)
  user_before = user_model.predict(x, verbose=0)
  policy_before = keras.config.dtype_policy().name
  tf_keras_before = tf.keras.layers.Dense

from dolg_tf import config as config_lib, run_layout
from dolg_tf.data import synthetic
from dolg_tf.export import versions
from dolg_tf.keras_api import keras as dolg_keras
from dolg_tf.model import builder
from dolg_tf.training import trainer

work = sys.argv[1]
pattern, _, num_classes = synthetic.ensure_demo_data(
  os.path.join(work, "data"), num_classes=4, views_per_class=4, image_size=48, num_shards=1
)
tiny = config_lib.ModelConfig(
  backbone_depth=26, backbone_width_multiplier=0.125, local_dim=16, embedding_dim=16
)
experiment = config_lib.ExperimentConfig(
  model=tiny,
  data=config_lib.DataConfig(
    train_file_pattern=pattern, dataset_version="synthetic", num_classes=num_classes,
    image_size=32,
  ),
  train=config_lib.TrainConfig(
    batch_size=4, max_steps=2, log_every=1, validate_every=0, export_at_end=True,
    mixed_precision="mixed_bfloat16",
  ),
  export=config_lib.ExportConfig(max_image_size=64, image_scales=(1.0,)),
)
logdir = os.path.join(work, "run")
run = trainer.Trainer(experiment, run_layout.RunLayout(logdir))
run.train()
export = versions.export_saved_model(
  run.model, tiny, os.path.join(work, "export"), export_config=experiment.export
)
reexport = versions.export_from_checkpoint(logdir, export_base=os.path.join(work, "reexport"))
image = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
descriptors = []
for folder in (export, reexport):
  serve = tf.saved_model.load(folder).signatures["serving_default"]
  out = serve(input_image=tf.constant(image), input_scales=tf.constant([1.0]),
              input_global_scales_ind=tf.constant([0]))
  descriptors.append(out["global_descriptors"].numpy().tolist())
report["descriptors"] = descriptors

# Checkpoint round trip: every variable written, every one restored.
dolg_keras.utils.set_random_seed(1)
model = builder.build_model(tiny, image_size=32, num_classes=num_classes)
dolg_keras.utils.set_random_seed(2)
other = builder.build_model(tiny, image_size=32, num_classes=num_classes)
path = tf.train.Checkpoint(model=model).write(os.path.join(work, "roundtrip", "ckpt"))
stored = [k for k in tf.train.list_variables(path)
          if k[0].startswith("model/") and k[0].endswith(".ATTRIBUTES/VARIABLE_VALUE")]
status = tf.train.Checkpoint(model=other).read(path)
status.assert_consumed()
report["num_variables"] = len(model.variables)
report["num_stored"] = len(stored)
report["max_difference"] = max(
  float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in zip(model.variables, other.variables)
)
report["dolg_keras"] = dolg_keras.__name__

report["legacy_env_after"] = os.environ.get("TF_USE_LEGACY_KERAS")
if keras3:
  report["policy"] = [policy_before, keras.config.dtype_policy().name]
  report["tf_keras_unchanged"] = tf.keras.layers.Dense is tf_keras_before
  report["tf_keras_is_keras3"] = tf.keras.layers.Dense is keras.layers.Dense
  user_model.fit(x, np.ones((8, 3), np.float32), epochs=1, verbose=0)
  report["user_model_trains"] = bool(
    np.any(user_model.predict(x, verbose=0) != user_before)
  )
print("REPORT " + json.dumps(report))
"""


class Keras3CoexistenceTest(tf.test.TestCase):
  def test_dolg_tf_beside_keras3(self):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run(
      [sys.executable, "-c", _SCRIPT, self.create_tempdir().full_path],
      capture_output=True,
      text=True,
      env=env,
      timeout=600,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    report = json.loads(lines[-1][len("REPORT ") :])

    self.assertIsNone(report["legacy_env_before"])
    self.assertIsNone(report["legacy_env_after"])
    self.assertGreater(report["num_variables"], 100)
    self.assertEqual(report["num_stored"], report["num_variables"])
    self.assertEqual(report["max_difference"], 0.0)
    export, reexport = report["descriptors"]
    self.assertAllClose(export, reexport, atol=1e-6)
    if report["keras3"]:
      self.assertEqual(report["dolg_keras"], "tf_keras")
      self.assertEqual(report["policy"][0], report["policy"][1])
      self.assertTrue(report["tf_keras_unchanged"])
      self.assertTrue(report["tf_keras_is_keras3"])
      self.assertTrue(report["user_model_trains"])


if __name__ == "__main__":
  tf.test.main()
