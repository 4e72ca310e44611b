"""Training throughput and peak memory of DOLG on this machine.

  python benchmarks/training_benchmark.py --depth=50 --image_sizes=224,512 --batch_sizes=16,8

For each (image size, batch size): builds the model and an ArcFace head
(81313 classes, GLDv2-clean), runs --warmup_steps untimed training steps (graph
tracing) and --steps timed ones of the training loop's own step (forward,
margin head, coupled L2, SGD-Nesterov, global-norm clipping) on random images,
and prints images/s and the process's peak RSS. The input pipeline is left out:
it runs in parallel with the step in real training.
"""

import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from dolg_tf import config as config_lib  # noqa: E402
from dolg_tf.model import builder  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("depth", 50, "ResNet depth.")
flags.DEFINE_list("image_sizes", ["224", "512"], "Square training image sizes.")
flags.DEFINE_list("batch_sizes", ["16", "8"], "Batch size for each image size.")
flags.DEFINE_integer("num_classes", 81313, "Classes of the margin head.")
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps.")
flags.DEFINE_integer("steps", 5, "Timed steps.")
flags.DEFINE_string("mixed_precision", "float32", "Keras policy.")


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def measure(image_size: int, batch_size: int) -> float:
  tf.keras.mixed_precision.set_global_policy(FLAGS.mixed_precision)
  config = config_lib.ModelConfig(backbone_depth=FLAGS.depth)
  model = builder.build_model(config, image_size=image_size)
  head = builder.build_head(config, FLAGS.num_classes)
  head(tf.zeros([1, config.embedding_dim]))
  optimizer = tf.keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True, global_clipnorm=10.0)
  variables = model.trainable_variables + head.trainable_variables
  images = tf.random.uniform([batch_size, image_size, image_size, 3], 0, 255)
  labels = tf.random.uniform([batch_size], 0, FLAGS.num_classes, dtype=tf.int32)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      logits = head(model(images, training=True), labels, training=True)
      loss = tf.reduce_mean(
        tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
      )
      loss += 1e-4 * tf.add_n([tf.nn.l2_loss(v) for v in variables])
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss

  for _ in range(FLAGS.warmup_steps):
    step().numpy()
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    step().numpy()
  return FLAGS.steps * batch_size / (time.perf_counter() - start)


def main(argv):
  del argv  # unused
  print(f"DOLG R{FLAGS.depth} training step, {FLAGS.num_classes} classes, {FLAGS.mixed_precision}")
  print(f"{'image':>6} {'batch':>6} {'img/s':>8} {'peak RSS GB':>12}")
  for size, batch in zip(FLAGS.image_sizes, FLAGS.batch_sizes):
    rate = measure(int(size), int(batch))
    print(f"{size:>6} {batch:>6} {rate:8.2f} {_peak_rss_gb():12.2f}", flush=True)


if __name__ == "__main__":
  app.run(main)
