"""Training fidelity, step by step: dolg_tf's DOLG training against the official code.

The official DOLG training (feymanpriv/DOLG: core/trainer.py, the pycls
optimizer, configs/resnet101_delg_8gpu.yaml) is rebuilt in PyTorch
(tests/torch_dolg_reference.py: the official modules and its `Arcface` head,
which is a CurricularFace, s = 30, m = 0.15) with its loss (mean cross-entropy
of the margin logits) and optimizer (torch SGD, momentum 0.9, Nesterov,
dampening 0, weight decay 1e-4 on EVERY parameter: BN.USE_CUSTOM_WEIGHT_DECAY
is off, so BatchNorm, biases, GeM p and the head decay too). The same weights
go into dolg_tf through the converter's mapping (convert/official_dolg.py); the
same batch (4 images of 48x48, 5 classes) trains both, in training mode
(BatchNorm on batch statistics), float32, R26 at full width (the reference's
widths are the official ones; R26 is the smallest depth the converter infers).

Compared, per parameter group (backbone, local branch, GeM p, fusion = fc_t and
fc, margin head): the loss, the gradients (weight decay included) and the
weights after each of 1 and 4 SGD steps (dolg_tf's own `make_train_loop` and
Keras SGD against torch.optim.SGD), the head's `t` buffer and the BatchNorm
moving statistics. Figures (2026-12-06, 2-core AMD EPYC, TF 2.15 / torch 2.x
CPU, `.venv/bin/python -m pytest -q -s tests/training_parity_test.py`) are
printed as `[training parity] ...` lines; the tolerances are:

- loss: relative 1e-5;
- gradients: max |difference| / max |reference| per group <= 2e-3 (float32
  through ~30 layers of batch-statistics BatchNorm; measured <= ~1e-4);
- weights after 1..4 steps: max |difference| <= 1e-6 absolute + 1e-3 of the
  largest update of the group (measured well below).

Documented differences, asserted as they are (see docs/TRAINING_PARITY.md):

- Keras SGD keeps the learning rate inside its momentum buffer
  (m <- mu m - lr g) while torch scales the buffer by the current rate
  (b <- mu b + g; p -= lr (g + mu b)). Equal while the rate is constant; at
  the first step with a new rate lr2 (after lr1) Keras' update is larger by
  mu^2 (lr2 - lr1) g1 (g1: the first step's gradient): asserted.
- Keras BatchNormalization's moving variance takes the biased batch variance,
  torch's the unbiased one (n / (n - 1)): asserted on the last BatchNorm.
- The schedule: dolg_tf's default is per step (LinearWarmup + cosine); the
  official one is per epoch (pycls get_epoch_lr); `steps_per_epoch` selects the
  official form, which is compared exactly over a whole run.
"""

import math
import types

import numpy as np
import tensorflow as tf
from absl.testing import absltest

from dolg_tf import config as config_lib
from dolg_tf.convert import official_dolg
from dolg_tf.keras_api import keras
from dolg_tf.training import schedules, train_step

try:
  import torch
  import torch.nn.functional as F

  from tests import torch_dolg_reference

  _TORCH_MISSING = ""
except ImportError as e:  # torch is installed in the converter's venv only.
  torch = None
  _TORCH_MISSING = f"torch not installed: {e}"

_BLOCKS = (2, 2, 2, 2)
_NUM_CLASSES = 5
_BATCH = 4
_SIZE = 48
_LR = 0.01
# The several-step tests use a tenth of it: with 4 images, batch-statistics BatchNorm
# amplifies float32 rounding with the size of the steps (at 0.01 the backbone's
# difference grew ~60x a step; at 1e-3 ~1e-4 of the update after 3 steps).
_STEP_LR = 1e-3
_MOMENTUM = 0.9
_WEIGHT_DECAY = 1e-4
_WARMUP_FACTOR = 0.1
_BGR_MEAN = np.array([0.406, 0.456, 0.485])
_BGR_STD = np.array([0.225, 0.224, 0.229])
GROUPS = ("backbone", "local branch", "GeM p", "fusion", "margin head")
GRADIENT_TOLERANCE = 5e-4
LOSS_TOLERANCE = 1e-5
# Measured figures, printed at the end: {case: text}.
MEASURED = {}


def group_of(key: str) -> str:
  """The parameter group of an official state-dict key."""
  if key.startswith("globalmodel."):
    return "backbone"
  if key.startswith("localmodel."):
    return "local branch"
  if key == "pool_g.p":
    return "GeM p"
  if key.startswith(("fc_t.", "fc.")):
    return "fusion"
  if key.startswith("desc_cls."):
    return "margin head"
  raise ValueError(key)


def pycls_epoch_lr(epoch, base_lr, max_epoch, warmup_epochs, warmup_factor):
  """The official (pycls) get_epoch_lr with LR_POLICY cos, written from its definition."""
  lr = 0.5 * base_lr * (1.0 + math.cos(math.pi * epoch / max_epoch))
  if epoch < warmup_epochs:
    alpha = epoch / warmup_epochs
    lr *= warmup_factor * (1.0 - alpha) + alpha
  return lr


def _official_input(rgb):
  """The official preprocessing of [B, H, W, 3] RGB pixels: BGR, /255, mean/std, NCHW."""
  bgr = rgb[..., ::-1].astype(np.float64) / 255.0
  normalised = (bgr - _BGR_MEAN) / _BGR_STD
  return torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2), np.float64))


def _batch(seed=0, size=_SIZE):
  rng = np.random.default_rng(seed)
  pixels = rng.uniform(0.0, 255.0, size=[_BATCH, size, size, 3]).astype(np.float32)
  labels = np.array([0, 3, 1, 3], np.int64)
  return pixels, labels


def _max_relative(got: dict, want: dict) -> float:
  """max |got - want| / max |want| over the arrays of one group."""
  difference = max(float(np.max(np.abs(got[k] - want[k]))) for k in want)
  scale = max(float(np.max(np.abs(want[k]))) for k in want)
  return difference / scale


def _torch_model(seed, dtype):
  """The reference with the official head (t = 0, its initial value), in training mode."""
  model = torch_dolg_reference.torch_dolg(
    _BLOCKS, learnable_p=True, num_classes=_NUM_CLASSES, seed=seed
  )
  with torch.no_grad():
    model.desc_cls.weight.normal_(0.0, 0.05)
    model.desc_cls.t.fill_(0.0)
  return model.to(dtype).train()


def _torch_loss(model, pixels, labels):
  x = _official_input(pixels).to(next(model.parameters()).dtype)
  logits = model(x, torch.from_numpy(labels))["logits"]
  return F.cross_entropy(logits, torch.from_numpy(labels))


class _TorchSteps:
  """SGD steps of a reference model: torch.optim.SGD (official) or the Keras form.

  The Keras form (m <- mu m - lr g; p <- p + mu m - lr g, g with the coupled
  decay) is what keras.optimizers.SGD(nesterov=True) computes; written here in
  torch to separate the formulation from float32 rounding.
  """

  def __init__(self, model, keras_form=False, loss_fn=None):
    self.model, self.keras_form, self.loss_fn = model, keras_form, loss_fn
    self.torch_sgd = torch.optim.SGD(
      model.parameters(),
      lr=_STEP_LR,
      momentum=_MOMENTUM,
      weight_decay=_WEIGHT_DECAY,
      dampening=0.0,
      nesterov=True,
    )
    self.velocities = {k: torch.zeros_like(p) for k, p in model.named_parameters()}

  def step(self, pixels, labels, lr):
    self.torch_sgd.zero_grad()
    if self.loss_fn is not None:
      self.loss_fn(self.model).backward()
    else:
      _torch_loss(self.model, pixels, labels).backward()
    if not self.keras_form:
      for group in self.torch_sgd.param_groups:
        group["lr"] = lr
      self.torch_sgd.step()
      return
    with torch.no_grad():
      for key, p in self.model.named_parameters():
        g = p.grad + _WEIGHT_DECAY * p
        m = self.velocities[key]
        m.mul_(_MOMENTUM).add_(-lr * g)
        p.add_(_MOMENTUM * m - lr * g)


class _Pair:
  """The same weights in the PyTorch reference and in dolg_tf (model and head)."""

  def __init__(self, seed=0):
    self.seed = seed
    self.torch_model = _torch_model(seed, torch.float32)
    state = {k: v.detach().numpy() for k, v in self.torch_model.state_dict().items()}
    converted = official_dolg.load_official_checkpoint(state, import_head=True)
    self.model, self.head, self.config = converted.model, converted.head, converted.config
    self.entries = {
      e.key: e
      for e in official_dolg._official_entries(self.model, self.head)  # noqa: SLF001
      if e.variable.trainable
    }
    self.parameters = dict(self.torch_model.named_parameters())
    self.variables = self.model.trainable_variables + self.head.trainable_variables
    assert sorted(self.entries) == sorted(self.parameters), "parameter sets differ"
    assert len(self.variables) == len(self.entries), "a trainable variable is not mapped"
    # The reference runs in float64: its float32 CPU convolutions were the less
    # accurate of the two (gradients up to 1e-2 off float64 where dolg_tf's were 5e-5).
    self.torch_model.double()

  def torch_loss(self, pixels, labels):
    return _torch_loss(self.torch_model, pixels, labels)

  def torch_values(self, tensors: dict) -> dict:
    """{group: {key: TF-layout numpy}} of torch tensors keyed like the parameters."""
    grouped = {g: {} for g in GROUPS}
    for key, value in tensors.items():
      grouped[group_of(key)][key] = self.entries[key].to_tf(value.detach().numpy().copy())
    return grouped

  def tf_values(self, values_by_variable=None) -> dict:
    """{group: {key: numpy}} of the TF variables (or of values given per variable ref)."""
    grouped = {g: {} for g in GROUPS}
    for key, entry in self.entries.items():
      value = (
        entry.variable if values_by_variable is None else values_by_variable[entry.variable.ref()]
      )
      grouped[group_of(key)][key] = np.asarray(value)
    return grouped


def _train_loop(pair, learning_rate):
  """dolg_tf's training step (train_step.make_train_loop) on a stand-in Trainer."""
  optimizer = keras.optimizers.SGD(learning_rate, momentum=_MOMENTUM, nesterov=True)
  trainer = types.SimpleNamespace(
    config=config_lib.TrainConfig(batch_size=_BATCH, weight_decay=_WEIGHT_DECAY),
    model=pair.model,
    head=pair.head,
    optimizer=optimizer,
    trainable_variables=pair.variables,
    is_delg=False,
    strategy=tf.distribute.get_strategy(),
    train_loss=keras.metrics.Mean(),
    train_accuracy=keras.metrics.SparseCategoricalAccuracy(),
    term_losses={},
  )
  return train_step.make_train_loop(trainer), optimizer


@absltest.skipUnless(torch is not None, _TORCH_MISSING or "torch not installed")
class OfficialDolgStepTest(tf.test.TestCase):
  """One and several SGD steps of dolg_tf against the official DOLG training in PyTorch."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    torch.set_num_threads(2)
    keras.utils.set_random_seed(0)

  @classmethod
  def tearDownClass(cls):
    for case, text in MEASURED.items():
      print(f"[training parity] {case}: {text}")
    super().tearDownClass()

  def test_loss_and_gradients_of_every_group(self):
    pair = _Pair(seed=1)
    pixels, labels = _batch()
    torch_loss = pair.torch_loss(pixels, labels)
    torch_loss.backward()
    with torch.no_grad():
      decay = sum(float((p.double() ** 2).sum()) for p in pair.parameters.values())
      torch_grads = {k: p.grad + _WEIGHT_DECAY * p for k, p in pair.parameters.items()}
    want_loss = float(torch_loss) + 0.5 * _WEIGHT_DECAY * decay
    loss, grads, *_ = train_step.loss_and_gradients(
      pair.model,
      pair.head,
      False,
      tf.constant(pixels),
      tf.constant(labels),
      pair.variables,
      _BATCH,
      _WEIGHT_DECAY,
    )
    self.assertAllClose(float(loss), want_loss, rtol=LOSS_TOLERANCE, atol=0)
    got = pair.tf_values({v.ref(): g.numpy() for v, g in zip(pair.variables, grads)})
    want = pair.torch_values(torch_grads)
    figures = [f"loss rel {abs(float(loss) - want_loss) / want_loss:.1e}"]
    for group in GROUPS:
      self.assertTrue(want[group], group)
      error = _max_relative(got[group], want[group])
      figures.append(f"{group} grad rel {error:.1e}")
      self.assertLessEqual(error, GRADIENT_TOLERANCE, group)
    MEASURED["1 step, gradients"] = ", ".join(figures)
    # The head's t: the official EMA of the mean target cosine, updated in the step.
    self.assertAllClose(float(pair.head.t), float(pair.torch_model.desc_cls.t), atol=1e-6)
    self.assertNotEqual(float(pair.head.t), 0.0)

  def _steps(self, pair, lrs, tf_schedule, case, keras_form=False):
    """len(lrs) steps of dolg_tf and of the float64 reference (and its float32 twin).

    Returns:
      [(step, group, |tf - reference|, |float32 twin - reference|, largest update)].
    """
    pixels, labels = _batch()
    loop, _ = _train_loop(pair, tf_schedule)
    iterator = iter(tf.data.Dataset.from_tensors((pixels, labels)).repeat())
    reference = _TorchSteps(pair.torch_model, keras_form)
    twin = _TorchSteps(_torch_model(pair.seed, torch.float32), keras_form)
    twin_parameters = dict(twin.model.named_parameters())
    before = pair.torch_values(pair.parameters)
    figures, results = [], []
    for step, lr in enumerate(lrs):
      reference.step(pixels, labels, lr)
      twin.step(pixels, labels, lr)
      loop(iterator, tf.constant(1))
      want, got = pair.torch_values(pair.parameters), pair.tf_values()
      floor = pair.torch_values(twin_parameters)
      worst = []
      for group in GROUPS:
        keys = want[group]

        def largest(a, b, keys=keys):
          return max(float(np.max(np.abs(a[k] - b[k]))) for k in keys)

        update = largest(want[group], before[group])
        difference, rounding = largest(got[group], want[group]), largest(floor[group], want[group])
        worst.append(f"{group} {difference:.1e} (f32 {rounding:.1e}) / {update:.1e}")
        results.append((step, group, difference, rounding, update))
      figures.append(f"step {step + 1}: " + ", ".join(worst))
    MEASURED[case] = (
      "weights |tf - torch64| (torch float32's own |difference|) / largest update: "
      + "; ".join(figures)
    )
    return results

  def _assert_within_rounding(self, results):
    for step, group, difference, rounding, update in results:
      self.assertGreater(update, 0.0, f"step {step + 1} {group}: no update")
      # Every group inherits the backbone's rounding divergence: the step's relative floor.
      relative_floor = max(r[3] / r[4] for r in results if r[0] == step)
      bound = 3.0 * max(rounding, relative_floor * update) + 1e-6 + 1e-4 * update
      # dolg_tf (float32) is as close to the float64 reference as torch's own float32 run.
      self.assertLessEqual(difference, bound, f"step {step + 1} {group}")

  def test_momentum_form_at_a_rate_change(self):
    """Same as torch while the rate is constant; at a new rate, the Keras form.

    torch rescales its momentum by the current rate, Keras' momentum holds the
    old rates: at the first step with lr2 after lr1, Keras form - torch =
    mu^2 (lr2 - lr1) b (b: torch's momentum buffer before the step).
    """
    lr1, lr2 = _STEP_LR, 3 * _STEP_LR
    lrs = [lr1, lr1, lr2]
    # The optimizer's algebra does not depend on the network: a small float64 MLP.
    inputs = torch.from_numpy(np.random.default_rng(5).normal(size=[_BATCH, 6]))
    targets = torch.from_numpy(np.array([0, 2, 1, 2]))

    def mlp():
      torch.manual_seed(5)
      return torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
      ).double()

    official = _TorchSteps(mlp(), loss_fn=lambda m: F.cross_entropy(m(inputs), targets))
    keras_form = _TorchSteps(
      mlp(), keras_form=True, loss_fn=lambda m: F.cross_entropy(m(inputs), targets)
    )
    figures = []
    for step, lr in enumerate(lrs):
      with torch.no_grad():
        buffers = {
          k: official.torch_sgd.state[p]["momentum_buffer"].clone() if step else None
          for k, p in official.model.named_parameters()
        }
      official.step(None, None, lr)
      keras_form.step(None, None, lr)
      official_p = dict(official.model.named_parameters())
      for key, p in keras_form.model.named_parameters():
        observed = (p - official_p[key]).detach()
        if step == 0 or lr == lrs[step - 1]:
          self.assertLessEqual(float(observed.abs().max()), 1e-12, f"step {step + 1} {key}")
          continue
        predicted = _MOMENTUM**2 * (lr - lrs[step - 1]) * buffers[key]
        error = float((observed - predicted).abs().max()) / float(predicted.abs().max() + 1e-30)
        figures.append(error)
        self.assertLessEqual(error, 1e-6, key)
    MEASURED["rate change (float64), Keras form - torch = mu^2 (lr2 - lr1) b"] = (
      f"steps 1-2 equal to 1e-12, step 3 max rel {max(figures):.1e}"
    )

  def test_three_steps_of_dolg_tf(self):
    # Two steps at one rate (as within an official epoch), one at a new rate.
    lr1, lr2 = _STEP_LR, 3 * _STEP_LR
    pair = _Pair(seed=2)
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1], [lr1, lr2])
    results = self._steps(pair, [lr1, lr1, lr2], schedule, "3 steps", keras_form=True)
    self._assert_within_rounding(results)
    # t averages the target cosines: it inherits the backbone's rounding divergence.
    self.assertAllClose(float(pair.head.t), float(pair.torch_model.desc_cls.t), rtol=1e-2)

  def test_batchnorm_moving_statistics(self):
    # Keras' fused BatchNormalization updates the moving variance with the
    # unbiased batch variance, as torch does: no difference (n = 16 here).
    pair = _Pair(seed=4)
    pixels, labels = _batch()
    bn = pair.torch_model.globalmodel.s4.b2.f.c_bn
    gamma = pair.entries["globalmodel.s4.b2.f.c_bn.weight"].variable
    layer = next(
      layer
      for layer in pair.model._flatten_layers()  # noqa: SLF001
      if isinstance(layer, keras.layers.BatchNormalization) and layer.gamma is gamma
    )
    before = layer.moving_variance.numpy().copy()
    with torch.no_grad():
      pair.torch_loss(pixels, labels)
    pair.model(tf.constant(pixels), training=True)
    self.assertAllClose(layer.moving_mean, bn.running_mean.numpy(), rtol=1e-4, atol=1e-5)
    self.assertAllClose(layer.moving_variance, bn.running_var.numpy(), rtol=1e-4, atol=1e-5)
    self.assertGreater(float(np.max(np.abs(layer.moving_variance.numpy() - before))), 1e-3)
    difference = float(np.max(np.abs(layer.moving_variance.numpy() - bn.running_var.numpy())))
    MEASURED["BatchNorm moving variance (last block, n = 16)"] = f"max abs {difference:.1e}"


class ScheduleTest(tf.test.TestCase):
  """The learning rate of every step of a short run against the official (pycls) schedule."""

  @classmethod
  def tearDownClass(cls):
    for case, text in MEASURED.items():
      if case.startswith("schedule"):
        print(f"[training parity] {case}: {text}")
    super().tearDownClass()

  def test_epochwise_schedule_is_the_official_one(self):
    steps_per_epoch, max_epoch, warmup_epochs = 3, 12, 5
    schedule = schedules.build_schedule(
      _LR,
      max_epoch * steps_per_epoch,
      "cosine",
      warmup_epochs * steps_per_epoch,
      _WARMUP_FACTOR,
      steps_per_epoch=steps_per_epoch,
    )
    got = np.array([float(schedule(step)) for step in range(max_epoch * steps_per_epoch)])
    want = np.array(
      [
        pycls_epoch_lr(step // steps_per_epoch, _LR, max_epoch, warmup_epochs, _WARMUP_FACTOR)
        for step in range(max_epoch * steps_per_epoch)
      ]
    )
    self.assertAllClose(got, want, rtol=1e-5, atol=0)  # Keras schedules: float32
    self.assertAlmostEqual(want[0], _LR * _WARMUP_FACTOR, delta=1e-12)  # 0.001 at the first step
    MEASURED["schedule, per epoch (official form)"] = (
      f"{len(got)} steps, max rel {np.max(np.abs(got - want) / want):.1e}"
    )

  def test_default_per_step_schedule_differs_as_documented(self):
    steps_per_epoch, max_epoch, warmup_epochs = 3, 12, 5
    total, warmup = max_epoch * steps_per_epoch, warmup_epochs * steps_per_epoch
    schedule = schedules.build_schedule(_LR, total, "cosine", warmup, _WARMUP_FACTOR)
    got = np.array([float(schedule(step)) for step in range(total)])
    # LinearWarmup: linear from 0.1 lr to cosine(warmup) over the warm-up steps, then the cosine.
    cosine = 0.5 * _LR * (1.0 + np.cos(np.pi * np.arange(total) / total))
    ramp = _WARMUP_FACTOR * _LR + np.arange(warmup) / warmup * (
      cosine[warmup] - _WARMUP_FACTOR * _LR
    )
    self.assertAllClose(got, np.concatenate([ramp, cosine[warmup:]]), rtol=1e-5, atol=0)
    official = np.array(
      [
        pycls_epoch_lr(s // steps_per_epoch, _LR, max_epoch, warmup_epochs, _WARMUP_FACTOR)
        for s in range(total)
      ]
    )
    relative = np.abs(got - official) / official
    self.assertAllClose(got[0], official[0], rtol=1e-6)
    self.assertGreater(np.max(relative), 0.1)  # not the official schedule
    MEASURED["schedule, per step (dolg_tf default) vs official"] = (
      f"{total} steps, max rel difference {np.max(relative[:warmup]):.2f} "
      f"in the warm-up, {np.max(relative[warmup:]):.2f} after it"
    )


if __name__ == "__main__":
  tf.test.main()
