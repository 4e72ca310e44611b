"""The optimizers dolg-train builds (train.optimizer): SGD, and Adam/AdamW as PyTorch computes them.

- sgd: Keras SGD with train.momentum and train.nesterov (DOLG's and DELG's
  optimizer); train.weight_decay is PyTorch SGD's coupled decay, added to the
  loss as weight_decay * sum(w^2) / 2 (train_step.loss_and_gradients).
- sgd_torch: the same SGD with torch.optim.SGD's momentum buffer (TorchSGD):
  equal to Keras SGD while the rate is constant, exact where it changes (the
  official DOLG code's optimizer, for the official_* presets).
- adam: PyTorch's torch.optim.Adam with its defaults, beta1 0.9, beta2 0.999,
  epsilon 1e-8 (the GLR 2021 winner's optimizer: configs/default_config.py
  cfg.optimizer = "Adam"). Its weight_decay is coupled L2 as well (torch adds
  weight_decay * w to the gradient), which is the same loss term as for SGD.
- adamw: torch.optim.AdamW: decoupled decay w -= lr * weight_decay * w before
  the Adam step; the decay is the optimizer's, so the loss must then carry no
  L2 term.

Keras' Adam differs from torch's in where epsilon goes: Keras (tf-keras 2.15
and 2.20, default adaptive_epsilon=False) updates by
lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), i.e. torch's formula
with torch's epsilon replaced by eps / sqrt(1 - b2^t) (31.6 eps at step 1).
That matters where gradients are as small as epsilon; `TorchAdam` therefore
adds epsilon to sqrt(v_hat) exactly as torch does:
w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).

train.momentum and train.nesterov are SGD's; Adam and AdamW use torch's betas.
train.lr_multipliers scale gradients (param_groups), which scales an SGD
update but (up to epsilon) not an Adam one: Adam's step is invariant to the
gradient's scale.
"""

import tensorflow as tf

from dolg_tf.config_sections import OPTIMIZERS
from dolg_tf.keras_api import keras

# torch.optim.Adam / AdamW defaults.
TORCH_BETA_1 = 0.9
TORCH_BETA_2 = 0.999
TORCH_EPSILON = 1e-8


class TorchSGD(keras.optimizers.SGD):
  """Keras SGD that keeps torch.optim.SGD's momentum buffer (dampening 0).

  torch: b <- mu b + g; p <- p - lr (g + mu b) (Nesterov) or p - lr b. Keras
  keeps the rate inside its momentum (m <- mu m - lr g), which is the same
  while the rate is constant; at a change from lr1 to lr2 the Keras form is off
  by mu^2 (lr2 - lr1) b (docs/TRAINING_PARITY.md). The slot is Keras' "m" and
  holds torch's b. Sparse gradients are made dense.
  """

  def update_step(self, gradient, variable):
    """One torch SGD step of `variable`."""
    if isinstance(gradient, tf.IndexedSlices):
      gradient = tf.convert_to_tensor(gradient)
    lr = tf.cast(self.learning_rate, variable.dtype)
    momentum = tf.cast(self.momentum, variable.dtype)
    buffer = self.momentums[self._index_dict[self._var_key(variable)]]
    buffer.assign(momentum * buffer + gradient)
    step = gradient + momentum * buffer if self.nesterov else buffer
    variable.assign_sub(lr * step)


class TorchAdam(keras.optimizers.Adam):
  """Keras Adam whose epsilon is added to sqrt(v_hat), as torch.optim.Adam/AdamW.

  With `weight_decay` (Keras' decoupled decay, w -= lr * wd * w before the
  step) it is torch.optim.AdamW. As torch, the bias corrections count each
  variable's own steps (a slot "step"), not the optimizer's: a backbone that
  starts training after train.freeze_backbone_steps starts at t = 1 (with the
  global step it would begin with ~3x larger, sign-like updates). Sparse
  gradients are made dense; no amsgrad.
  """

  def __init__(self, learning_rate, **kwargs):
    kwargs.setdefault("beta_1", TORCH_BETA_1)
    kwargs.setdefault("beta_2", TORCH_BETA_2)
    kwargs.setdefault("epsilon", TORCH_EPSILON)
    if kwargs.get("amsgrad"):
      raise ValueError("TorchAdam does not implement amsgrad")
    super().__init__(learning_rate, **kwargs)

  def build(self, var_list):
    """Adam's m and v, and a step count per variable (torch's state["step"])."""
    built = getattr(self, "_built", False)
    super().build(var_list)
    if built:
      return
    self._steps = [self.add_variable_from_reference(var, "step", shape=[]) for var in var_list]

  def update_step(self, gradient, variable):
    """One torch Adam step of `variable` (the decay, if any, was applied before)."""
    if isinstance(gradient, tf.IndexedSlices):
      gradient = tf.convert_to_tensor(gradient)
    dtype = variable.dtype
    lr = tf.cast(self.learning_rate, dtype)
    beta_1 = tf.cast(self.beta_1, dtype)
    beta_2 = tf.cast(self.beta_2, dtype)
    index = self._index_dict[self._var_key(variable)]
    m, v, steps = self._momentums[index], self._velocities[index], self._steps[index]
    steps.assign_add(tf.ones([], steps.dtype))
    step = tf.cast(steps, dtype)
    m.assign_add((gradient - m) * (1 - beta_1))
    v.assign_add((tf.square(gradient) - v) * (1 - beta_2))
    denominator = tf.sqrt(v) / tf.sqrt(1 - tf.pow(beta_2, step)) + tf.cast(self.epsilon, dtype)
    variable.assign_sub(lr / (1 - tf.pow(beta_1, step)) * m / denominator)


def build_optimizer(
  name: str,
  learning_rate,
  momentum: float = 0.0,
  nesterov: bool = False,
  clip_norm: float = 0.0,
  weight_decay: float = 0.0,
):
  """The Keras optimizer of train.optimizer.

  Args:
    name: "sgd", "sgd_torch", "adam" or "adamw".
    learning_rate: a float or a keras LearningRateSchedule.
    momentum: SGD's momentum (ignored by adam/adamw).
    nesterov: SGD's Nesterov momentum (ignored by adam/adamw).
    clip_norm: clip the gradients' global norm to this (0: no clipping).
    weight_decay: adamw's decoupled decay (lr * weight_decay * w per step);
      sgd and adam take their coupled decay as an L2 loss term instead.

  Returns:
    keras SGD, `TorchSGD` (sgd_torch), or `TorchAdam` (adam; adamw with
    weight_decay).

  Raises:
    ValueError: an unknown name, or weight_decay for sgd/adam (one line).
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, not {name!r}")
  if weight_decay and name != "adamw":
    raise ValueError(
      f"decoupled weight_decay is adamw's; {name} takes train.weight_decay as an L2 loss term"
    )
  clip = clip_norm or None
  if name in ("sgd", "sgd_torch"):
    sgd = keras.optimizers.SGD if name == "sgd" else TorchSGD
    return sgd(learning_rate, momentum=momentum, nesterov=nesterov, global_clipnorm=clip)
  return TorchAdam(
    learning_rate,
    weight_decay=(weight_decay or None) if name == "adamw" else None,
    global_clipnorm=clip,
  )
