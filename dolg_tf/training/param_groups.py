"""The parts of a DOLG/DELG network that train.lr_multipliers names, and their gradient scaling.

- backbone: `model.backbone` (ResNet or keras.applications network);
- local: DOLG's local branch (`multi_atrous`, `local_attention`), DELG's
  autoencoder and attention network;
- global: the rest of the model: GeM p, DOLG's fc_t and fc after the
  orthogonal fusion, DELG's whitening;
- head: the classifiers over the classes: the margin head and DELG's
  attention classifier (`attention_fc`).

Scaling a part's gradients by m is, for SGD, scaling its learning rate by m:
with momentum (Keras' velocity = momentum * velocity - lr * g) the velocity of
a part is m times what it would be, so every update is m times the plain one,
Nesterov included; the coupled weight decay is part of the loss
(train_step.loss_and_gradients), so its gradient is scaled too (as a PyTorch
param group with lr * m). With train.clip_norm the global norm is measured on
the scaled gradients. This holds for SGD, the trainer's optimizer; Adam-type
optimizers normalise the gradient, so there scaling it would not scale the step.
"""

import tensorflow as tf

# Model attributes (DOLG, DELG) whose variables are the "local" part.
LOCAL_LAYERS = ("multi_atrous", "attention", "autoencoder")
# Model attributes whose variables belong to the "head" part (with the margin head).
HEAD_LAYERS = ("attention_classifier",)


def _refs(layers) -> set:
  return {v.ref() for layer in layers if layer is not None for v in layer.variables}


def part_of_variables(model, head, variables) -> list[str]:
  """The part ('backbone', 'local', 'global' or 'head') of each of `variables`."""
  backbone = _refs([model.backbone])
  local = _refs([getattr(model, name, None) for name in LOCAL_LAYERS])
  heads = _refs([head] + [getattr(model, name, None) for name in HEAD_LAYERS])
  parts = []
  for variable in variables:
    ref = variable.ref()
    if ref in heads:
      parts.append("head")
    elif ref in backbone:
      parts.append("backbone")
    elif ref in local:
      parts.append("local")
    else:
      parts.append("global")
  return parts


def gradient_scales(model, head, variables, multipliers: dict[str, float]) -> list[float]:
  """The multiplier of each of `variables` ({part: multiplier}, see part_of_variables)."""
  return [multipliers.get(part, 1.0) for part in part_of_variables(model, head, variables)]


def scale_gradients(gradients, scales):
  """Each gradient times its scale (None stays None; a scale of 1 is no op)."""
  scaled = []
  for gradient, scale in zip(gradients, scales):
    if gradient is None or scale == 1.0:
      scaled.append(gradient)
    elif isinstance(gradient, tf.IndexedSlices):
      scaled.append(
        tf.IndexedSlices(
          gradient.values * tf.cast(scale, gradient.values.dtype),
          gradient.indices,
          gradient.dense_shape,
        )
      )
    else:
      scaled.append(gradient * tf.cast(scale, gradient.dtype))
  return scaled
