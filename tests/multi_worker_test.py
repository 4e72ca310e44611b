"""Two local processes train with MultiWorkerMirroredStrategy through TF_CONFIG."""

import json
import os
import socket
import subprocess
import sys

import tensorflow as tf

from dolg_tf import config as config_lib
from dolg_tf.data import synthetic

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = config_lib.ModelConfig(
  backbone_depth=26, backbone_width_multiplier=0.125, local_dim=16, embedding_dim=16
)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


class MultiWorkerTest(tf.test.TestCase):
  def test_two_workers_train_in_sync_and_the_chief_checkpoints(self):
    root = self.create_tempdir().full_path
    train_pattern, _, num_classes = synthetic.ensure_demo_data(
      os.path.join(root, "data"), num_classes=3, views_per_class=6, image_size=40
    )
    config_path = config_lib.save_model_config(TINY, root)
    workers = [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]
    processes = []
    for index in range(2):
      tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
      env = dict(
        os.environ, TF_CONFIG=json.dumps(tf_config), PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2"
      )
      log = open(os.path.join(root, f"worker{index}.log"), "w")
      processes.append(
        (
          log,
          subprocess.Popen(
            [
              sys.executable,
              "-m",
              "dolg_tf.train",
              f"--train_file_pattern={train_pattern}",
              "--dataset_version=synthetic",
              f"--num_classes={num_classes}",
              f"--logdir={os.path.join(root, 'run')}",
              "--experiment=dolg_gldv2",
              f"--config_file={config_path}",
              "--distribution_strategy=multi_worker_mirrored",
              "--batch_size=4",
              "--image_size=32",
              "--max_steps=3",
              "--log_every=1",
              "--checkpoint_every=3",
              "--export_at_end=false",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
          ),
        )
      )
    for log, process in processes:
      try:
        process.wait(timeout=400)
      finally:
        if process.poll() is None:
          process.kill()
        log.close()
    logs = [open(os.path.join(root, f"worker{i}.log")).read() for i in range(2)]
    for (_, process), text in zip(processes, logs):
      self.assertEqual(process.returncode, 0, text[-3000:])
    # Both replicas report the same (all-reduced) global-batch loss at every step.
    losses = [
      [line.split("| loss ")[1].split()[0] for line in text.splitlines() if "| loss " in line]
      for text in logs
    ]
    self.assertLen(losses[0], 3)
    self.assertEqual(losses[0], losses[1])
    self.assertIn("2 replica(s)", logs[0])
    checkpoint = tf.train.latest_checkpoint(os.path.join(root, "run", "checkpoints"))
    self.assertIsNotNone(checkpoint)
    self.assertTrue(checkpoint.endswith("ckpt-3"))


if __name__ == "__main__":
  tf.test.main()
