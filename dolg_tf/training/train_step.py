"""The training step: forward pass, margin-head loss (DELG: three terms), gradients, SGD update.

`make_train_loop` returns the one tf.function Trainer.train calls (once per
step, so that a SIGTERM stops after the current step); the forward and
backward pass are XLA-compiled when train.jit_compile is set.

train.lr_multipliers scales each part's gradients (backbone, local, global,
head: training.param_groups) before the update: for SGD that is the part's
learning rate times the multiplier, with or without (Nesterov) momentum, whose
velocity is then scaled alike; the coupled weight decay is in the loss, so its
share of the gradient is scaled too.
"""

import tensorflow as tf

from dolg_tf.keras_api import keras
from dolg_tf.training import param_groups

# DELG's loss weights (DELF train.py defaults).
DELG_ATTENTION_LOSS_WEIGHT = 1.0
DELG_RECONSTRUCTION_LOSS_WEIGHT = 10.0


def _cross_entropy(labels, logits):
  return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def _forward(model, head, is_delg: bool, images, labels):
  """Per-example loss, margin-free cosines (for accuracy) and per-example loss terms."""
  if not is_delg:
    logits, cosines = head(model(images, training=True), labels, training=True, return_cosines=True)
    return _cross_entropy(labels, logits), cosines, {}
  out = model(images, training=True, return_intermediates=True)
  logits, cosines = head(out["global_embedding"], labels, training=True, return_cosines=True)
  terms = {
    "global_loss": _cross_entropy(labels, logits),
    "attention_loss": _cross_entropy(labels, out["attention_logits"]),
    "reconstruction_loss": tf.reduce_mean(
      tf.square(tf.stop_gradient(out["f3"]) - out["reconstructed_features"]), axis=[1, 2, 3]
    ),
  }
  per_example = (
    terms["global_loss"]
    + DELG_ATTENTION_LOSS_WEIGHT * terms["attention_loss"]
    + DELG_RECONSTRUCTION_LOSS_WEIGHT * terms["reconstruction_loss"]
  )
  return per_example, cosines, terms


def loss_and_gradients(
  model, head, is_delg, images, labels, variables, batch_size, weight_decay, scale_loss=None
):
  """The step's loss and its gradients with respect to `variables` (no update).

  The loss is the per-example loss averaged over the global `batch_size`
  (tf.nn.compute_average_loss, as DELF's train.py) plus, when `weight_decay`
  > 0, PyTorch SGD's coupled decay as the L2 term weight_decay * sum(w^2) / 2
  over every variable in `variables` (the official DOLG code decays all
  parameters: BatchNorm, biases, GeM p and the head included).

  `scale_loss` (mixed float16's LossScaleOptimizer.get_scaled_loss) scales
  the loss before differentiation; the gradients are then scaled too.

  Returns:
    (loss, gradients, per-example loss, margin-free cosines, per-term losses).
  """
  with tf.GradientTape() as tape:
    per_example, cosines, terms = _forward(model, head, is_delg, images, labels)
    loss = tf.nn.compute_average_loss(per_example, global_batch_size=batch_size)
    if weight_decay > 0:
      # The gradient of wd * tf.nn.l2_loss(w) is wd * w: torch's d_p += wd * p.
      l2 = weight_decay * tf.add_n([tf.nn.l2_loss(v) for v in variables])
      loss += tf.nn.scale_regularization_loss(l2)
    scaled_loss = scale_loss(loss) if scale_loss is not None else loss
  return loss, tape.gradient(scaled_loss, variables), per_example, cosines, terms


def make_train_loop(trainer):
  """`train_loop(iterator, num_steps)`: num_steps SGD steps of `trainer`'s model and head.

  Args:
    trainer: a training.trainer.Trainer (its strategy, model, head, optimizer,
      trainable_variables, is_delg, train config and the metrics it updates:
      train_loss, train_accuracy, term_losses).
  """
  config = trainer.config
  model, head, optimizer = trainer.model, trainer.head, trainer.optimizer
  variables = trainer.trainable_variables
  is_loss_scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
  scales = param_groups.gradient_scales(model, head, variables, config.lr_multiplier_values())

  def gradients(images, labels):
    _, grads, per_example, cosines, terms = loss_and_gradients(
      model,
      head,
      trainer.is_delg,
      images,
      labels,
      variables,
      config.batch_size,
      0.0 if config.optimizer == "adamw" else config.weight_decay,  # AdamW decays itself
      optimizer.get_scaled_loss if is_loss_scaled else None,
    )
    return grads, per_example, cosines, terms

  if config.jit_compile:
    # XLA compiles the forward and backward pass; the optimizer and the
    # metrics stay outside (their variables are updated by TF ops).
    gradients = tf.function(gradients, jit_compile=True)

  def step_fn(images, labels):
    grads, per_example, cosines, terms = gradients(images, labels)
    if is_loss_scaled:
      grads = optimizer.get_unscaled_gradients(grads)
    grads = param_groups.scale_gradients(grads, scales)
    optimizer.apply_gradients(zip(grads, variables))
    trainer.train_loss.update_state(per_example)
    trainer.train_accuracy.update_state(labels, cosines)
    for name, value in terms.items():
      trainer.term_losses[name].update_state(value)

  @tf.function
  def train_loop(iterator, num_steps):
    for _ in tf.range(num_steps):
      images, labels = next(iterator)
      trainer.strategy.run(step_fn, args=(images, labels))

  return train_loop
