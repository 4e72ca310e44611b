"""Tests for dolg_tf.training.optimizers (train.optimizer: sgd, sgd_torch, adam, adamw).

sgd_torch is checked against torch.optim.SGD's documented algorithm (dampening 0):
  b <- mu b + g;  theta <- theta - lr (g + mu b)  (Nesterov)  or  theta - lr b

Adam and AdamW are checked against a NumPy transcription of torch.optim.Adam's
and AdamW's documented algorithm (pytorch.org/docs, torch.optim.Adam / AdamW):
  g <- g + lambda * theta                       (Adam's weight_decay, coupled)
  theta <- theta - lr * lambda * theta          (AdamW's, decoupled, first)
  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
  theta <- theta - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
with torch's defaults b1 0.9, b2 0.999, eps 1e-8, and, where torch is
installed (.venv), against torch.optim.Adam / AdamW themselves.
"""

import os

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from dolg_tf.keras_api import keras
from dolg_tf.training import optimizers

INITIAL = np.array([0.5, -1.0, 2.0, 0.0, 1e-3], np.float32)
# Three steps' gradients; the tiny entries (about eps) show where epsilon goes.
GRADIENTS = np.array(
  [
    [0.3, -2.0, 1e-7, 0.5, -3e-8],
    [-0.1, -1.0, 2e-7, 0.4, 1e-8],
    [0.2, 0.5, -1e-7, 0.3, -2e-8],
  ],
  np.float32,
)
LRS = (0.01, 0.005, 0.002)  # the schedule below, one per step


def _torch_adam_numpy(theta, gradients, lrs, weight_decay=0.0, decoupled=False):
  b1, b2, eps = 0.9, 0.999, 1e-8
  theta = theta.astype(np.float64)
  m = np.zeros_like(theta)
  v = np.zeros_like(theta)
  for t, (g, lr) in enumerate(zip(gradients.astype(np.float64), lrs), start=1):
    if decoupled:
      theta = theta - lr * weight_decay * theta
    elif weight_decay:
      g = g + weight_decay * theta
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
  return theta


def _torch_sgd_numpy(theta, gradients, lrs, momentum, nesterov):
  theta = theta.astype(np.float64)
  buffer = np.zeros_like(theta)
  for g, lr in zip(gradients.astype(np.float64), lrs):
    buffer = momentum * buffer + g
    theta = theta - lr * (g + momentum * buffer if nesterov else buffer)
  return theta


def _schedule():
  return keras.optimizers.schedules.PiecewiseConstantDecay([0, 1], list(LRS))  # x <= b0: v0


def _run(optimizer, steps=3, mode="eager", gradients=GRADIENTS):
  strategy = tf.distribute.MirroredStrategy(["/cpu:0"]) if mode == "mirrored" else None
  scope = strategy.scope() if strategy else tf.name_scope("eager")
  with scope:
    variable = tf.Variable(INITIAL)
    optimizer.build([variable])

  def apply(gradient):
    optimizer.apply_gradients([(gradient, variable)])

  step = tf.function(apply) if mode != "eager" else apply
  for gradient in gradients[:steps]:
    if strategy:
      strategy.run(step, args=(tf.constant(gradient),))
    else:
      step(tf.constant(gradient))
  return variable.numpy()


class OptimizersTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters("eager", "function", "mirrored")
  def test_adam_three_steps_are_torchs(self, mode):
    optimizer = optimizers.build_optimizer("adam", _schedule(), momentum=0.9, nesterov=True)
    self.assertIsInstance(optimizer, optimizers.TorchAdam)
    self.assertAllClose(
      [optimizer.beta_1, optimizer.beta_2, optimizer.epsilon], [0.9, 0.999, 1e-8], rtol=0
    )
    expected = _torch_adam_numpy(INITIAL, GRADIENTS, LRS)
    self.assertAllClose(_run(optimizer, mode=mode), expected, atol=1e-6, rtol=0)

  def test_stock_keras_adam_puts_epsilon_elsewhere(self):
    # Why TorchAdam exists: Keras' epsilon is torch's times sqrt(1 - b2^t),
    # which moves the entries whose gradients are about eps far off torch's.
    stock = keras.optimizers.Adam(_schedule(), beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    result = _run(stock)
    expected = _torch_adam_numpy(INITIAL, GRADIENTS, LRS)
    self.assertAllClose(result[:2], expected[:2], atol=1e-6)  # large gradients: equal
    self.assertGreater(np.abs(result[2] - expected[2]), 1e-3)  # 1e-7 gradients: not

  @parameterized.parameters("eager", "function")
  def test_adamw_three_steps_are_torchs(self, mode):
    optimizer = optimizers.build_optimizer("adamw", _schedule(), weight_decay=0.1)
    expected = _torch_adam_numpy(INITIAL, GRADIENTS, LRS, weight_decay=0.1, decoupled=True)
    self.assertAllClose(_run(optimizer, mode=mode), expected, atol=1e-6, rtol=0)
    # Coupled torch Adam decay (an L2 loss term in dolg_tf) is another result.
    coupled = _torch_adam_numpy(INITIAL, GRADIENTS, LRS, weight_decay=0.1)
    self.assertGreater(np.abs(coupled - expected).max(), 1e-4)

  @parameterized.parameters(("adam", 0.0), ("adam", 0.1), ("adamw", 0.1))
  def test_against_torch_itself(self, name, weight_decay):
    try:
      import torch
    except ImportError:
      self.skipTest("torch is installed only on .venv (Python 3.11); NumPy reference used here")
    theta = torch.nn.Parameter(torch.tensor(INITIAL.astype(np.float64)))
    torch_class = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    torch_optimizer = torch_class([theta], lr=LRS[0], weight_decay=weight_decay)
    for gradient, lr in zip(GRADIENTS, LRS):
      for group in torch_optimizer.param_groups:
        group["lr"] = lr
      theta.grad = torch.tensor(gradient.astype(np.float64))
      torch_optimizer.step()
    expected = theta.detach().numpy()
    numpy_reference = _torch_adam_numpy(
      INITIAL, GRADIENTS, LRS, weight_decay=weight_decay, decoupled=name == "adamw"
    )
    self.assertAllClose(numpy_reference, expected, atol=1e-12, rtol=0)
    # dolg_tf: adam's coupled decay is an L2 term, i.e. weight_decay * w in the gradient.
    variable = tf.Variable(INITIAL)
    optimizer = optimizers.build_optimizer(
      name, _schedule(), weight_decay=weight_decay if name == "adamw" else 0.0
    )
    for gradient in GRADIENTS:
      if name == "adam":
        gradient = gradient + weight_decay * variable.numpy()
      optimizer.apply_gradients([(tf.constant(gradient), variable)])
    self.assertAllClose(variable.numpy(), expected, atol=1e-6, rtol=0)

  @parameterized.parameters("eager", "function")
  def test_bias_correction_counts_each_variables_steps(self, mode):
    # torch keeps state["step"] per parameter: one without a gradient (a frozen
    # backbone) is not stepped, and starts at t = 1 when it first gets one.
    first, late = tf.Variable(INITIAL), tf.Variable(INITIAL[::-1].copy())
    optimizer = optimizers.build_optimizer("adam", 0.01)
    optimizer.build([first, late])

    def apply(pairs):
      optimizer.apply_gradients(pairs)

    step = tf.function(apply) if mode == "function" else apply
    step([(tf.constant(GRADIENTS[0]), first)])
    step([(tf.constant(GRADIENTS[1]), first)])
    step([(tf.constant(GRADIENTS[2]), first), (tf.constant(GRADIENTS[0]), late)])
    step([(tf.constant(GRADIENTS[1]), first), (tf.constant(GRADIENTS[1]), late)])
    self.assertEqual(int(optimizer.iterations), 4)
    expected_first = _torch_adam_numpy(INITIAL, GRADIENTS[[0, 1, 2, 1]], [0.01] * 4)
    expected_late = _torch_adam_numpy(INITIAL[::-1], GRADIENTS[:2], [0.01] * 2)
    self.assertAllClose(first.numpy(), expected_first, atol=1e-6, rtol=0)
    self.assertAllClose(late.numpy(), expected_late, atol=1e-6, rtol=0)

  def test_under_the_float16_loss_scale_optimizer(self):
    # train.mixed_precision=mixed_float16 wraps the optimizer (Trainer._build).
    wrapped = keras.mixed_precision.LossScaleOptimizer(
      optimizers.build_optimizer("adam", _schedule())
    )
    expected = _torch_adam_numpy(INITIAL, GRADIENTS, LRS)
    self.assertAllClose(_run(wrapped, mode="function"), expected, atol=1e-6, rtol=0)

  def test_resume_from_checkpoint_continues_the_same_steps(self):
    directory = self.create_tempdir().full_path
    variable = tf.Variable(INITIAL)
    optimizer = optimizers.build_optimizer("adam", _schedule())
    for gradient in GRADIENTS[:2]:
      optimizer.apply_gradients([(tf.constant(gradient), variable)])
    path = tf.train.Checkpoint(variable=variable, optimizer=optimizer).save(
      os.path.join(directory, "ckpt")
    )
    restored = tf.Variable(np.zeros_like(INITIAL))
    resumed = optimizers.build_optimizer("adam", _schedule())
    resumed.build([restored])
    tf.train.Checkpoint(variable=restored, optimizer=resumed).restore(path).assert_consumed()
    resumed.apply_gradients([(tf.constant(GRADIENTS[2]), restored)])
    expected = _torch_adam_numpy(INITIAL, GRADIENTS, LRS)
    self.assertAllClose(restored.numpy(), expected, atol=1e-6, rtol=0)

  @parameterized.parameters((0.0, False, 0.0), (0.9, True, 5.0), (0.9, False, 0.0))
  def test_sgd_is_the_trainers(self, momentum, nesterov, clip_norm):
    optimizer = optimizers.build_optimizer("sgd", 0.1, momentum, nesterov, clip_norm)
    reference = keras.optimizers.SGD(
      0.1, momentum=momentum, nesterov=nesterov, global_clipnorm=clip_norm or None
    )
    self.assertIs(type(optimizer), keras.optimizers.SGD)
    self.assertEqual(optimizer.get_config(), reference.get_config())
    self.assertEqual(optimizer.global_clipnorm, clip_norm or None)
    self.assertAllEqual(_run(optimizer), _run(reference))

  @parameterized.parameters((True, "eager"), (False, "function"), (True, "mirrored"))
  def test_sgd_torch_is_torchs_where_the_rate_changes(self, nesterov, mode):
    optimizer = optimizers.build_optimizer("sgd_torch", _schedule(), 0.9, nesterov)
    self.assertIsInstance(optimizer, optimizers.TorchSGD)
    expected = _torch_sgd_numpy(INITIAL, GRADIENTS, LRS, 0.9, nesterov)
    self.assertAllClose(_run(optimizer, mode=mode), expected, atol=1e-7, rtol=1e-6)
    # Keras' SGD keeps the rate in its momentum: off by mu^2 (lr2 - lr1) b at a change.
    keras_sgd = _run(optimizers.build_optimizer("sgd", _schedule(), 0.9, nesterov))
    self.assertGreater(np.max(np.abs(keras_sgd - expected)), 1e-4)

  @parameterized.parameters(True, False)
  def test_sgd_reference_is_torch_itself(self, nesterov):
    try:
      import torch
    except ImportError:
      self.skipTest("torch is installed only on .venv (Python 3.11); NumPy reference used here")
    theta = torch.nn.Parameter(torch.tensor(INITIAL.astype(np.float64)))
    torch_optimizer = torch.optim.SGD([theta], lr=LRS[0], momentum=0.9, nesterov=nesterov)
    for gradient, lr in zip(GRADIENTS, LRS):
      torch_optimizer.param_groups[0]["lr"] = lr
      theta.grad = torch.tensor(gradient.astype(np.float64))
      torch_optimizer.step()
    self.assertAllClose(
      _torch_sgd_numpy(INITIAL, GRADIENTS, LRS, 0.9, nesterov),
      theta.detach().numpy(),
      atol=1e-12,
      rtol=0,
    )

  def test_sgd_torch_equals_keras_sgd_at_a_constant_rate(self):
    torch_form = _run(optimizers.build_optimizer("sgd_torch", 0.01, 0.9, True))
    keras_form = _run(optimizers.build_optimizer("sgd", 0.01, 0.9, True))
    self.assertAllClose(torch_form, keras_form, atol=1e-7, rtol=1e-6)

  def test_clip_norm_reaches_adam(self):
    optimizer = optimizers.build_optimizer("adam", 0.1, clip_norm=1.5)
    self.assertEqual(optimizer.global_clipnorm, 1.5)
    self.assertIsNone(optimizers.build_optimizer("adamw", 0.1).global_clipnorm)

  def test_errors_are_one_line(self):
    with self.assertRaisesRegex(
      ValueError, r"^train.optimizer must be one of sgd, sgd_torch, adam, adamw, not 'rmsprop'$"
    ):
      optimizers.build_optimizer("rmsprop", 0.1)
    with self.assertRaisesRegex(ValueError, r"^decoupled weight_decay is adamw's; adam takes"):
      optimizers.build_optimizer("adam", 0.1, weight_decay=1e-4)
    with self.assertRaisesRegex(ValueError, "amsgrad"):
      optimizers.TorchAdam(0.1, amsgrad=True)


if __name__ == "__main__":
  tf.test.main()
