"""Training throughput and peak memory of DOLG on this machine.

  python benchmarks/training_benchmark.py --depth=50 --image_sizes=224,512 --batch_sizes=16,8
  python benchmarks/training_benchmark.py --compare_official   # the comparison below only

--compare_official measures one piece of work, R50 at 224 px, batch 8, 1000
classes, ArcFace, SGD with Nesterov momentum and weight decay, in one run:
  * the Trainer's own train loop (dolg_tf.training.trainer) fed by the real
    tf.data input pipeline (synthetic GLDv2-layout TFRecords, decoding and
    random-resized-crop augmentation), fp32, and under mixed_bfloat16;
  * the same loop fed with one cached batch (no input work at all): the ratio
    of the two is the input pipeline's cost left after overlap;
  * the official DOLG PyTorch structure (tests/torch_dolg_reference.py, the
    optional torch) with an ArcFace head and torch.optim.SGD(nesterov=True)
    on the same batch shape, fp32, with torch's threads set to the cores;
  * with --compare_jit, the fp32 loop with train.jit_compile (XLA).
Every row is built and warmed up first, then the rows run in turn for
--compare_rounds rounds of --compare_steps steps, and each prints its median,
so a drift of the machine's speed hits all of them alike.

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

from benchmarks import interleaved  # noqa: E402
from dolg_tf import config as config_lib  # noqa: E402
from dolg_tf.keras_api import keras  # noqa: E402
from dolg_tf.model import builder  # noqa: E402
from dolg_tf.utils import cpu  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("depth", 50, "ResNet depth.")
flags.DEFINE_list("image_sizes", ["224", "512"], "Square training image sizes.")
flags.DEFINE_list("batch_sizes", ["16", "8"], "Batch size for each image size.")
flags.DEFINE_integer("num_classes", 81313, "Classes of the margin head.")
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps.")
flags.DEFINE_integer("steps", 5, "Timed steps.")
flags.DEFINE_string("mixed_precision", "float32", "Keras policy.")
flags.DEFINE_bool("compare_official", False, "Only the comparison with the official code.")
flags.DEFINE_integer("compare_steps", 5, "Steps of each comparison row per round.")
flags.DEFINE_integer("compare_rounds", 3, "Rounds of the comparison (the rows in turn; medians).")
flags.DEFINE_bool("force_bfloat16", False, "Time mixed_bfloat16 even where it is emulated.")
flags.DEFINE_bool("compare_jit", False, "Also time the fp32 Trainer loop with train.jit_compile.")

COMPARISON = dict(depth=50, image_size=224, batch_size=8, num_classes=1000)


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def measure(image_size: int, batch_size: int) -> float:
  keras.mixed_precision.set_global_policy(FLAGS.mixed_precision)
  config = config_lib.ModelConfig(backbone_depth=FLAGS.depth)
  model = builder.build_model(config, image_size=image_size)
  head = builder.build_head(config, FLAGS.num_classes)
  head(tf.zeros([1, config.embedding_dim]))
  optimizer = keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True, global_clipnorm=10.0)
  variables = model.trainable_variables + head.trainable_variables
  images = tf.random.uniform([batch_size, image_size, image_size, 3], 0, 255)
  labels = tf.random.uniform([batch_size], 0, FLAGS.num_classes, dtype=tf.int32)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      logits = head(model(images, training=True), labels, training=True)
      loss = tf.reduce_mean(
        keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
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


def trainer_runner(workdir: str, mixed_precision: str, cached: bool, jit_compile=False):
  """A callable running FLAGS.compare_steps steps of the Trainer's train loop on COMPARISON's
  work (real or cached input), traced and warmed up."""
  from dolg_tf import run_layout  # noqa: PLC0415
  from dolg_tf.data import input_pipeline, synthetic  # noqa: PLC0415
  from dolg_tf.training import trainer as trainer_lib  # noqa: PLC0415

  data_dir = os.path.join(workdir, "data")
  if not os.path.exists(os.path.join(data_dir, "synthetic_info.json")):
    synthetic.write_training_set(data_dir, num_classes=20, views_per_class=20, image_size=256)
  batch, size = COMPARISON["batch_size"], COMPARISON["image_size"]
  experiment = config_lib.ExperimentConfig(
    model=config_lib.ModelConfig(backbone_depth=COMPARISON["depth"], head_type="arcface"),
    data=config_lib.DataConfig(
      train_file_pattern=os.path.join(data_dir, "train-*"),
      num_classes=COMPARISON["num_classes"],
      image_size=size,
    ),
    train=config_lib.TrainConfig(
      batch_size=batch,
      max_steps=1000,
      mixed_precision=mixed_precision,
      nesterov=True,
      jit_compile=jit_compile,
    ),
  )
  name = f"run_{mixed_precision}_{cached}_{jit_compile}"
  layout = run_layout.RunLayout(os.path.join(workdir, name))
  trainer = trainer_lib.Trainer(experiment, layout)
  train_loop = trainer._make_train_loop()  # the loop Trainer.train runs
  if cached:
    images = tf.random.uniform([batch, size, size, 3], 0, 255)
    labels = tf.random.uniform([batch], 0, COMPARISON["num_classes"], dtype=tf.int32)
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
  else:
    dataset = input_pipeline.make_dataset(
      experiment.data.train_file_pattern, batch_size=batch, image_size=size, training=True
    )
  iterator = iter(trainer.strategy.experimental_distribute_dataset(dataset))
  steps = tf.constant(FLAGS.compare_steps)
  train_loop(iterator, tf.constant(2))  # tracing and warm-up
  trainer.train_loss.result().numpy()

  def run():
    train_loop(iterator, steps)
    trainer.train_loss.result().numpy()

  return run


def official_runner():
  """A callable running FLAGS.compare_steps training steps of the official DOLG structure in
  PyTorch, warmed up (None without torch)."""
  try:
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    from tests import torch_dolg_reference  # noqa: PLC0415
  except ImportError:
    return None
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  model = torch_dolg_reference.torch_dolg((3, 4, 6, 3)).train()
  num_classes, scale, margin = COMPARISON["num_classes"], 30.0, 0.15
  weight = torch.nn.Parameter(torch.randn(num_classes, 512) * 0.01)
  parameters = list(model.parameters()) + [weight]
  optimizer = torch.optim.SGD(parameters, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
  batch, size = COMPARISON["batch_size"], COMPARISON["image_size"]
  images = torch.rand(batch, 3, size, size)
  labels = torch.randint(0, num_classes, (batch,))

  def step():
    cosine = F.linear(model(images)["descriptor"], F.normalize(weight, dim=1)).clamp(-1, 1)
    target = torch.cos(torch.acos(cosine.gather(1, labels[:, None])) + margin)
    logits = scale * cosine.scatter(1, labels[:, None], target)
    loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss)

  for _ in range(2):
    step()

  def run():
    for _ in range(FLAGS.compare_steps):
      step()

  return run


def compare_official() -> None:
  import tempfile  # noqa: PLC0415

  work = ", ".join(f"{k} {v}" for k, v in COMPARISON.items())
  print(
    f"training step, {work}, ArcFace, SGD Nesterov: median of {FLAGS.compare_rounds} rounds of "
    f"{FLAGS.compare_steps} steps per row, the rows in turn"
  )
  rows = [
    ("dolg_tf fp32, tf.data input", "float32", False),
    ("dolg_tf fp32, cached batch", "float32", True),
  ]
  if FLAGS.compare_jit:
    rows.append(("dolg_tf fp32 XLA, tf.data input", "float32", False, True))
  native_bf16 = cpu.has_native_bfloat16()
  if native_bf16 or FLAGS.force_bfloat16:
    rows.append(("dolg_tf mixed_bfloat16, tf.data input", "mixed_bfloat16", False))
  official_name = "official DOLG structure (PyTorch) fp32"
  with tempfile.TemporaryDirectory() as workdir:
    runners = {name: trainer_runner(workdir, *options) for name, *options in rows}
    official = official_runner()
    if official is not None:
      runners[official_name] = official
    items = FLAGS.compare_steps * COMPARISON["batch_size"]
    rates, samples = interleaved.interleaved_rates(runners, items, FLAGS.compare_rounds)
  for name, rate in rates.items():
    spread = ", ".join(f"{r:.2f}" for r in samples[name])
    print(f"  {name:<42} {rate:7.2f} img/s  (rounds: {spread})")
  real, cached = rates["dolg_tf fp32, tf.data input"], rates["dolg_tf fp32, cached batch"]
  print(f"  input pipeline: tf.data step / cached step = {real / cached:.3f}")
  if official is None:
    print("  official: torch not installed (requirements-torch.txt)")
  else:
    print(f"  dolg_tf fp32 / official fp32 = {real / rates[official_name]:.2f}x")
  bf16 = rates.get("dolg_tf mixed_bfloat16, tf.data input")
  if bf16 is None:
    print("  mixed_bfloat16: skipped, this CPU has no native bfloat16 (--force_bfloat16 runs it)")
  else:
    print(f"  mixed_bfloat16 / fp32 = {bf16 / real:.2f}x (native bfloat16: {native_bf16})")


def main(argv):
  del argv  # unused
  if FLAGS.compare_official:
    compare_official()
    return
  print(f"DOLG R{FLAGS.depth} training step, {FLAGS.num_classes} classes, {FLAGS.mixed_precision}")
  print(f"{'image':>6} {'batch':>6} {'img/s':>8} {'peak RSS GB':>12}")
  for size, batch in zip(FLAGS.image_sizes, FLAGS.batch_sizes):
    rate = measure(int(size), int(batch))
    print(f"{size:>6} {batch:>6} {rate:8.2f} {_peak_rss_gb():12.2f}", flush=True)


if __name__ == "__main__":
  app.run(main)
