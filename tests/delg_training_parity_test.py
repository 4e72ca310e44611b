"""Training fidelity, step by step: dolg_tf's DELG training against DELF's train.py.

DELF's network is tests/delf_reference.py (DELF's Keras structure and
attribute names, reduced: R26, 1/8 width); its weights go into dolg_tf's
DelgModel and head through the converter (convert/delf_checkpoint.py). The
loss is written here from DELF's train.py and model/delg_model.py (TF2):

- global: ArcFace on the cosine classifier (`cosine_classifier_logits`: both
  sides L2-normalised, margin m = 0.1 added to theta only where theta <=
  pi - m, times the scale 45.25), cross-entropy averaged over the global batch;
- attention: cross-entropy of `attn_classification` on the attention-pooled
  features; the attention and the autoencoder see `tf.stop_gradient(block3)`;
- reconstruction: reduce_mean(MSE(stop_gradient(block3), autoencoder output));
- total = global + 1.0 * attention + 10.0 * reconstruction; one tape over all
  trainable weights; gradients clipped to global norm 10; SGD momentum 0.9
  (no Nesterov, no weight decay).

Compared (4 images of 64x64, 5 classes, float32 on both sides): the three loss
terms, the gradients per group (backbone, whitening, attention, autoencoder,
attention classifier, margin head), the stop-gradients (the attention and
reconstruction losses give the backbone and whitening no gradient; the global
loss gives the local branch none) and the weights after each of 3 SGD steps.
Tolerances: loss terms relative 1e-5; gradients max |difference| / max
|reference| per group 1e-4; weights per step 1e-6 + 1e-4 of the group's
largest update, each step starting from DELF's weights (see test_three_steps).
Figures: `[delg training parity]` lines of
`.venv/bin/python -m pytest -q -s tests/delg_training_parity_test.py`, and
docs/TRAINING_PARITY.md.
"""

import math
import os
import tempfile
import types

import numpy as np
import tensorflow as tf

from dolg_tf import config as config_lib
from dolg_tf.convert import delf_checkpoint
from dolg_tf.keras_api import keras
from dolg_tf.training import train_step
from tests import delf_reference

_SMALL = dict(
  depth=26, width_multiplier=0.125, embedding_dim=32, reduced_dim=8, attention_hidden=16
)
_NUM_CLASSES = 5
_BATCH = 4
_LR = 0.01
_CLIP = 10.0
GROUPS = (
  "backbone",
  "whitening",
  "attention",
  "autoencoder",
  "attention classifier",
  "margin head",
)
MEASURED = {}


def group_of(name: str) -> str:
  """The parameter group of a DELF checkpoint name."""
  if name.startswith("backbone/embedding_layer"):
    return "whitening"
  for prefix, group in (
    ("backbone/", "backbone"),
    ("attention/", "attention"),
    ("autoencoder/", "autoencoder"),
    ("attn_classification", "attention classifier"),
    ("cosine_weights", "margin head"),
  ):
    if name.startswith(prefix):
      return group
  raise ValueError(name)


def delf_losses(model, images, labels, margin=0.1):
  """DELF's three DELG losses (train.py), from a DelfDelg's forward pass in training mode."""
  outputs = model.forward(images, training=True)
  embedding = tf.math.l2_normalize(outputs["global_embedding"], axis=1)
  weights = tf.math.l2_normalize(model.cosine_weights, axis=0)
  cosines = tf.matmul(embedding, weights)
  theta = tf.acos(cosines)
  one_hot = tf.one_hot(labels, _NUM_CLASSES)
  selected = tf.where(theta > math.pi - margin, tf.zeros_like(one_hot), one_hot)
  cosines = tf.cos(tf.where(tf.cast(selected, tf.bool), theta + margin, theta))
  logits = model.scale_factor * cosines

  def average(per_example):
    return tf.nn.compute_average_loss(per_example, global_batch_size=_BATCH)

  cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
  block3 = tf.stop_gradient(outputs["f3"])
  return {
    "global_loss": average(cross_entropy(labels, logits)),
    "attention_loss": average(
      cross_entropy(labels, model.attn_classification(outputs["attention_prelogits"]))
    ),
    "reconstruction_loss": tf.reduce_mean(
      keras.losses.mean_squared_error(block3, outputs["reconstructed_features"])
    ),
  }


def delf_total(losses):
  return (
    losses["global_loss"] + 1.0 * losses["attention_loss"] + 10.0 * losses["reconstruction_loss"]
  )


class DelgTrainingParityTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.logdir = os.path.join(tempfile.mkdtemp(), "delf")
    reference = delf_reference.randomize(
      delf_reference.DelfDelg(num_classes=_NUM_CLASSES, **_SMALL), seed=1
    )
    delf_reference.save_delf_checkpoint(reference, cls.logdir)
    rng = np.random.default_rng(0)
    cls.pixels = rng.uniform(0.0, 255.0, size=[_BATCH, 64, 64, 3]).astype(np.float32)
    cls.labels = np.array([0, 3, 1, 3], np.int32)

  @classmethod
  def tearDownClass(cls):
    for case, text in MEASURED.items():
      print(f"[delg training parity] {case}: {text}")
    super().tearDownClass()

  def _pair(self):
    """(DELF reference, dolg_tf model, head, {DELF name: (reference variable, ours)})."""
    reference = delf_reference.build(delf_reference.DelfDelg(num_classes=_NUM_CLASSES, **_SMALL))
    tf.train.Checkpoint(model=reference).read(
      tf.train.latest_checkpoint(os.path.join(self.logdir, delf_reference.CHECKPOINT_SUBDIR))
    ).expect_partial()
    converted = delf_checkpoint.load_delf_checkpoint(self.logdir, import_head=True)
    pairs = {}
    for name, ours in delf_checkpoint._entries(converted.model, converted.head):  # noqa: SLF001
      if not ours.trainable:
        continue
      theirs = reference
      for part in name.split("/"):
        theirs = getattr(theirs, part)
      pairs[name] = (theirs, ours)
    ours = converted.model.trainable_variables + converted.head.trainable_variables
    self.assertLen(pairs, len(ours))  # every trainable variable is compared
    self.assertLen(pairs, len(reference.trainable_weights))
    return reference, converted.model, converted.head, pairs

  def _images(self):
    return tf.constant(self.pixels), tf.constant(self.labels)

  def test_losses_gradients_and_stop_gradients(self):
    reference, model, head, pairs = self._pair()
    pixels, labels = self._images()
    names = sorted(pairs)
    with tf.GradientTape() as tape:
      want_terms = delf_losses(reference, (pixels - 128.0) / 128.0, labels)
      want_loss = delf_total(want_terms)
    want = tape.gradient(want_loss, [pairs[n][0] for n in names])
    variables = [pairs[n][1] for n in names]
    loss, got, _, _, terms = train_step.loss_and_gradients(
      model, head, True, pixels, labels, variables, _BATCH, 0.0
    )
    figures = []
    self.assertAllClose(float(loss), float(want_loss), rtol=1e-5, atol=0)
    for key, value in want_terms.items():
      ours = float(tf.reduce_mean(terms[key]))
      self.assertAllClose(ours, float(value), rtol=1e-5, atol=1e-7, msg=key)
      figures.append(f"{key} rel {abs(ours - float(value)) / abs(float(value)):.1e}")
    for group in GROUPS:
      index = [i for i, n in enumerate(names) if group_of(n) == group]
      self.assertTrue(index, group)
      difference = max(float(np.max(np.abs(got[i] - want[i]))) for i in index)
      scale = max(float(np.max(np.abs(want[i]))) for i in index)
      figures.append(f"{group} grad rel {difference / scale:.1e}")
      self.assertLessEqual(difference / scale, 1e-4, group)
    MEASURED["1 step"] = ", ".join(figures)

    # Stop-gradients: the local losses do not reach the backbone or the whitening,
    # the global loss does not reach the local branch (dolg_tf's own forward pass).
    with tf.GradientTape(persistent=True) as tape:
      _, _, terms = train_step._forward(model, head, True, pixels, labels)  # noqa: SLF001
      local = tf.reduce_mean(terms["attention_loss"]) + tf.reduce_mean(terms["reconstruction_loss"])
      global_loss = tf.reduce_mean(terms["global_loss"])
    for name, grad in zip(names, tape.gradient(local, variables)):
      if group_of(name) in ("backbone", "whitening", "margin head"):
        self.assertIsNone(grad, name)
    for name, grad in zip(names, tape.gradient(global_loss, variables)):
      if group_of(name) in ("attention", "autoencoder", "attention classifier"):
        self.assertIsNone(grad, name)
    del tape

  def test_three_steps(self):
    reference, model, head, pairs = self._pair()
    pixels, labels = self._images()
    names = sorted(pairs)
    theirs = [pairs[n][0] for n in names]
    delf_optimizer = keras.optimizers.SGD(_LR, momentum=0.9)
    optimizer = keras.optimizers.SGD(_LR, momentum=0.9, nesterov=False, global_clipnorm=_CLIP)
    trainer = types.SimpleNamespace(
      config=config_lib.TrainConfig(batch_size=_BATCH, weight_decay=0.0),
      model=model,
      head=head,
      optimizer=optimizer,
      trainable_variables=model.trainable_variables + head.trainable_variables,
      is_delg=True,
      strategy=tf.distribute.get_strategy(),
      train_loss=keras.metrics.Mean(),
      train_accuracy=keras.metrics.SparseCategoricalAccuracy(),
      term_losses={
        k: keras.metrics.Mean() for k in ("global_loss", "attention_loss", "reconstruction_loss")
      },
    )
    loop = train_step.make_train_loop(trainer)
    iterator = iter(tf.data.Dataset.from_tensors((pixels, labels)).repeat())
    before = {n: pairs[n][0].numpy().copy() for n in names}
    figures = []
    for step in range(3):
      with tf.GradientTape() as tape:
        loss = delf_total(delf_losses(reference, (pixels - 128.0) / 128.0, labels))
      clipped, _ = tf.clip_by_global_norm(tape.gradient(loss, theirs), _CLIP)
      delf_optimizer.apply_gradients(zip(clipped, theirs))
      loop(iterator, tf.constant(1))
      line = []
      for group in GROUPS:
        group_names = [n for n in names if group_of(n) == group]
        update = max(float(np.max(np.abs(pairs[n][0].numpy() - before[n]))) for n in group_names)
        difference = max(
          float(np.max(np.abs(pairs[n][0].numpy() - pairs[n][1].numpy()))) for n in group_names
        )
        line.append(f"{group} {difference:.1e}/{update:.1e}")
        self.assertGreater(update, 0.0, f"step {step + 1} {group}")
        self.assertLessEqual(difference, 1e-6 + 1e-4 * update, f"step {step + 1} {group}")
      figures.append(f"step {step + 1}: " + ", ".join(line))
      # The next step starts from DELF's weights (each side keeps its own momentum):
      # left to drift, float32 rounding crosses ReLU and max-pool kinks and grows
      # ~1000x in a step for some initialisations (seeds 6, 9, 11 of 12 reached
      # 1e-2 of the update at step 3), which says nothing about the training step.
      for name in names:
        pairs[name][1].assign(pairs[name][0])
    MEASURED["3 steps, weights |ours - DELF| / largest update"] = "; ".join(figures)


if __name__ == "__main__":
  tf.test.main()
