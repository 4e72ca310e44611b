"""The distributed training loop: model + margin head + optimizer under tf.distribute.

A run resumes from its latest checkpoint (training.run_checkpoints: model,
head and optimizer, whose `iterations` is the global step). A checkpoint that
does not fit the model of the config (another embedding size, depth, head or
number of classes) is refused naming it (CheckpointMismatchError), as is a
damaged one, e.g. a truncated data file (CheckpointDamagedError, naming the
previous checkpoint), and a training or validation file that is missing,
corrupt or holds labels outside [0, num_classes) (input_pipeline.check_records,
before the first step). A checkpoint that cannot be saved (disk full, read-only
file system) leaves no part of it behind (run_checkpoints.WriteError); the
earlier ones stay. SIGTERM is checked after every step (the step itself is
training.train_step), and so are the rules of training.divergence (a NaN/inf
loss, accuracy stuck at chance): a diverged run raises DivergedError, naming
the checkpoint kept and what to try, and saves nothing more. The progress line
and the summaries are training.train_log's. train.freeze_backbone_steps trains
the branches and the head alone first (staged fine-tuning). A run without a
checkpoint of its own starts from train.init_from when set (training.warm_start:
the weights only, at step 0).
"""

import math
import os
import shutil
import signal
import tempfile
import time

import tensorflow as tf
from absl import logging

from dolg_tf import config as config_lib
from dolg_tf import run_layout
from dolg_tf.data import gldv2, input_pipeline
from dolg_tf.keras_api import keras
from dolg_tf.model import builder, checkpoint_restore, keras_h5
from dolg_tf.training import (
  distribution,
  divergence,
  optimizers,
  run_checkpoints,
  schedules,
  sigterm,
  train_log,
  train_step,
  warm_start,
)
from dolg_tf.utils import cpu, progress
from dolg_tf.utils.error_text import first_line

# The errors of a diverged run (training.divergence), here for callers of the trainer.
DivergedError = divergence.DivergedError
NonFiniteLossError = divergence.NonFiniteLossError


def input_error(error: Exception, field: str, file_pattern: str) -> input_pipeline.DataError | None:
  """A one-line DataError for a read or decode failure of the input pipeline, else None."""
  hint = "set data.skip_corrupt_records=true to skip such records"
  if isinstance(error, tf.errors.DataLossError):
    return input_pipeline.DataError(
      f"{field} {file_pattern!r}: a record does not read ({first_line(error)}; did a file "
      f"change after the check at start-up?); {hint}"
    )
  described = input_pipeline.image_error(error)
  if described is None:
    return None
  return input_pipeline.DataError(f"{field} {file_pattern!r}: {described}; {hint}")


class Trainer:
  """Owns the strategy, model, head, optimizer, data and checkpoints of one run."""

  def __init__(
    self,
    experiment: config_lib.ExperimentConfig,
    layout: run_layout.RunLayout,
    data: config_lib.DataConfig | None = None,
    class_counts=None,
  ):
    """Builds everything and restores the latest checkpoint of `layout.checkpoints`.

    Args:
      experiment: the run's config, written to `layout.config` by `train`.
      layout: the run folder.
      data: the data section to train on, when it differs from
        `experiment.data` only by resolved file patterns (generated synthetic
        data); default `experiment.data`.
      class_counts: optional per-class image counts (sub-center head margins).

    Raises:
      FileNotFoundError: if no training file (or, when a validation pattern is
        given, no validation file) matches; the field and pattern named.
      input_pipeline.DataError: a corrupt or truncated file (unless
        data.skip_corrupt_records), a label outside [0, num_classes) or no
        record at all; the file named.
      CheckpointMismatchError: the latest checkpoint does not fit the model.
      warm_start.InitFromError: train.init_from (on a run without a
        checkpoint) names none, or one that does not fit the model.
    """
    self.experiment = experiment
    self.layout = layout
    self.model_config = experiment.model
    self.data = data = data or experiment.data
    self.config = config = experiment.train
    self.num_classes = gldv2.num_classes(data.dataset_version, data.num_classes or None)
    keras.utils.set_random_seed(config.seed)
    self.mixed_precision = cpu.resolve_auto(config.mixed_precision, "mixed_bfloat16")
    keras.mixed_precision.set_global_policy(self.mixed_precision)
    self.strategy = distribution.build_strategy(config)
    self.is_chief = distribution.is_chief(self.strategy)
    # After the strategy: multi-worker collectives must be set up before any TF op.
    self._check_records()
    if class_counts is None and self.model_config.head_type == "subcenter_arcface":
      class_counts = self.train_records.label_counts  # dynamic margins from the training files
    self.steps_per_epoch = config.steps_per_epoch or max(
      1, self.train_records.num_records // config.batch_size
    )
    self.total_steps = config.max_steps or max(1, config.epochs) * self.steps_per_epoch
    self.warmup_steps = config.warmup_steps or int(config.warmup_epochs * self.steps_per_epoch)
    self._checkpoint_dir = layout.checkpoints
    if not self.is_chief:
      # Non-chief workers must write checkpoints too (collective ops), but elsewhere.
      self._checkpoint_dir = tempfile.mkdtemp(prefix="dolg_worker_ckpt_")
    with self.strategy.scope():
      self._build(class_counts)
    self.checkpoint = tf.train.Checkpoint(
      model=self.model, head=self.head, optimizer=self.optimizer
    )
    self.checkpoints = run_checkpoints.RunCheckpoints(
      self.checkpoint, self._checkpoint_dir, config.max_checkpoints, layout.root
    )
    self.manager = self.checkpoints.manager
    self.restored_from = self.checkpoints.restore_latest()
    # {classifier: why} of the heads train.init_from left freshly initialised.
    self.reinitialised = {}
    if self.restored_from:
      logging.info("Resumed from %s at step %d", self.restored_from, self.step)
    elif config.init_from and not checkpoint_restore.existing_checkpoints(layout.checkpoints):
      # (Non-chief workers checkpoint elsewhere: they too start from the source only
      # when the run has no checkpoint.)
      self.reinitialised = warm_start.initialise(
        self.model, self.head, config.init_from, self.model_config
      )
      if class_counts is not None and hasattr(self.head, "set_class_counts"):
        self.head.set_class_counts(class_counts)  # this data's margins, not the source's
    self._train_step_fn = None
    self._eval_step_fn = None
    self.frozen_backbone = False
    self.monitor = divergence.DivergenceMonitor(
      self.num_classes,
      self.warmup_steps,
      divergence.window_steps(
        config.chance_window_steps, config.chance_window_min_epochs, self.steps_per_epoch
      ),
      config.chance_margin,
    )

  def _check_records(self) -> None:
    """One pass over the labels and record framing of every file (no image is decoded)."""
    data = self.data
    self.train_records = input_pipeline.check_records(
      data.train_file_pattern,
      self.num_classes,
      "data.train_file_pattern",
      skip_corrupt=data.skip_corrupt_records,
    )
    self.validation_records = None
    if data.validation_file_pattern:
      self.validation_records = input_pipeline.check_records(
        data.validation_file_pattern,
        self.num_classes,
        "data.validation_file_pattern",
        skip_corrupt=data.skip_corrupt_records,
      )

  def _build(self, class_counts) -> None:
    """The model, head, schedule, optimizer and metrics (in the strategy's scope)."""
    model_config, config = self.model_config, self.config
    self.is_delg = model_config.name == "delg"
    self.model = builder.build_model(
      model_config, image_size=self.data.image_size, num_classes=self.num_classes
    )
    self.head = builder.build_head(model_config, self.num_classes)
    self.head(tf.zeros([1, model_config.embedding_dim]))
    if class_counts is not None and hasattr(self.head, "set_class_counts"):
      self.head.set_class_counts(class_counts)
    if config.imagenet_checkpoint:
      keras_h5.load_backbone_weights(self.model.backbone, config.imagenet_checkpoint)
    self.learning_rate = schedules.build_schedule(
      config.initial_lr,
      self.total_steps,
      config.lr_schedule,
      self.warmup_steps,
      config.warmup_factor,
      steps_per_epoch=self.steps_per_epoch if config.lr_per_epoch else 0,
    )
    optimizer = optimizers.build_optimizer(
      config.optimizer,
      self.learning_rate,
      config.momentum,
      config.nesterov,
      config.clip_norm,
      weight_decay=config.weight_decay if config.optimizer == "adamw" else 0.0,
    )
    if self.mixed_precision == "mixed_float16":
      optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    self.optimizer = optimizer
    self.trainable_variables = self.model.trainable_variables + self.head.trainable_variables
    self.optimizer.build(self.trainable_variables)
    self.train_loss = keras.metrics.Mean("loss")
    # Per-term losses (DELG: global, attention, reconstruction).
    self.term_losses = {
      name: keras.metrics.Mean(name)
      for name in (("global_loss", "attention_loss", "reconstruction_loss") if self.is_delg else ())
    }
    self.train_accuracy = keras.metrics.SparseCategoricalAccuracy("accuracy")
    self.validation_accuracy = keras.metrics.SparseCategoricalAccuracy("accuracy")

  @property
  def step(self) -> int:
    return int(self.optimizer.iterations.numpy())

  def latest_checkpoint(self) -> str | None:
    """The newest checkpoint of the run whose files exist (RunCheckpoints.latest)."""
    return self.checkpoints.latest()

  def _dataset(self, file_pattern: str, training: bool) -> tf.distribute.DistributedDataset:
    config, data = self.config, self.data
    # A resumed run must not replay the augmentations of the steps it already did.
    seed = config.seed + self.step

    def dataset_fn(input_context):
      per_replica = input_context.get_per_replica_batch_size(config.batch_size)
      return input_pipeline.make_dataset(
        file_pattern,
        batch_size=per_replica,
        image_size=data.image_size,
        training=training,
        seed=seed,
        drop_remainder=training,
        input_context=input_context,
        crop_area_range=(data.min_crop_area, 1.0),
        skip_corrupt=data.skip_corrupt_records,
      )

    return self.strategy.distribute_datasets_from_function(dataset_fn)

  def _make_train_loop(self):
    """The tf.function `train_loop(iterator, num_steps)` of the current stage (train_step).

    Before step train.freeze_backbone_steps the backbone is frozen: not
    trainable, so its weights get no update and its BatchNorm layers run in
    inference mode (Keras' rule for a non-trainable BatchNormalization). The
    flag is set only with that setting (Keras sets it on every sub-layer).
    """
    if self.config.freeze_backbone_steps:
      self.frozen_backbone = self.step < self.config.freeze_backbone_steps
      self.model.backbone.trainable = not self.frozen_backbone
      self.trainable_variables = self.model.trainable_variables + self.head.trainable_variables
    return train_step.make_train_loop(self)

  def validate(self, file_pattern: str | None = None) -> float:
    """Top-1 accuracy of the cosine classifier (no margin) on validation data."""
    file_pattern = file_pattern or self.data.validation_file_pattern
    if not file_pattern or not tf.io.gfile.glob(file_pattern):
      return float("nan")
    self.validation_accuracy.reset_state()
    if self._eval_step_fn is None:
      # Built once: a new tf.function per validation run would retrace every time.
      model, head = self.model, self.head

      @tf.function
      def eval_step(images, labels):
        def fn(images, labels):
          self.validation_accuracy.update_state(labels, head(model(images, training=False)))

        self.strategy.run(fn, args=(images, labels))

      self._eval_step_fn = eval_step
    try:
      for i, (images, labels) in enumerate(self._dataset(file_pattern, training=False)):
        if self.config.validation_steps and i >= self.config.validation_steps:
          break
        self._eval_step_fn(images, labels)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
      error = input_error(e, "data.validation_file_pattern", file_pattern)
      if error is None:
        raise
      raise error from None
    return float(self.validation_accuracy.result())

  def save_checkpoint(self) -> str:
    """Saves the current step's checkpoint; returns its prefix.

    Raises:
      run_checkpoints.WriteError: naming the run folder, if the disk is full
        or read-only; the unfinished checkpoint's files are removed, earlier
        ones kept.
      divergence.NonFiniteWeightsError: the weights are NaN or inf; nothing is saved.
    """
    if not bool(divergence.all_finite(self.model.variables + self.head.variables)):
      try:
        self.monitor.check_weights(self.step, finite=False)
      except DivergedError as e:
        raise self._stopped(e) from None
    return self.checkpoints.save(self.step)

  def train(self) -> dict:
    """Runs until `total_steps`; returns final metrics.

    Raises:
      DivergedError: the run diverged (training.divergence: a NaN/inf loss or
        weights, accuracy stuck at chance); the message names the step, the
        last good loss, the checkpoint kept and what to try. No checkpoint of
        the diverged weights is written.
    """
    if self.is_chief:
      config_lib.save_config(self.experiment, self.layout.config)
    writers = (
      tf.summary.create_file_writer(
        self.layout.train_summaries if self.is_chief else tempfile.mkdtemp()
      ),
      tf.summary.create_file_writer(
        self.layout.validation_summaries if self.is_chief else tempfile.mkdtemp()
      ),
    )
    if self._train_step_fn is None:
      self._train_step_fn = self._make_train_loop()
    iterator = iter(self._dataset(self.data.train_file_pattern, training=True))
    # From here on a SIGTERM saves the current step's checkpoint (see train.py).
    interrupted = []
    previous_handler = sigterm.note_sigterm(interrupted)
    logging.info(
      "Training %s %s on %d classes: steps %d -> %d, global batch %d, %d replica(s), %s",
      self.model_config.name,
      self.model_config.backbone
      if self.model_config.backbone != "resnet"
      else f"R{self.model_config.backbone_depth}",
      self.num_classes,
      self.step,
      self.total_steps,
      self.config.batch_size,
      self.strategy.num_replicas_in_sync,
      self.mixed_precision,
    )
    try:
      return self._train_until_done(iterator, interrupted, *writers)
    finally:
      for writer in writers:
        writer.close()
      if previous_handler is not None:
        signal.signal(signal.SIGTERM, previous_handler)
      if not self.is_chief:
        shutil.rmtree(self._checkpoint_dir, ignore_errors=True)

  def _train_until_done(self, iterator, interrupted: list, writer, validation_writer) -> dict:
    """train's loop: log_every steps at a time, then validation, metrics and checkpoints."""
    config = self.config
    metrics = {}
    first_time = time.time()
    # Logged explicitly once per log_every steps (force=True), never by interval.
    steps = progress.Progress(self.total_steps, "step", "steps", interval=math.inf, start=self.step)
    log = train_log.TrainLog(steps, writer, validation_writer, self.model, config.batch_size)
    self._reset_train_metrics()
    while self.step < self.total_steps and not interrupted:
      num_steps = self._run_steps(
        iterator,
        min(config.log_every - self.step % config.log_every, self.total_steps - self.step),
        interrupted,
      )
      if not num_steps:
        break
      if (
        config.validate_every and self.step % config.validate_every < num_steps and not interrupted
      ):
        log.log_validation(self.step, self.validate())
      metrics = log.log(self.step, self._window_metrics(), tuple(self.term_losses))
      if self.step % config.checkpoint_every < num_steps or self.step >= self.total_steps:
        self.save_checkpoint()
    if interrupted:
      logging.warning("SIGTERM received at step %d: saving and stopping", self.step)
      if self.latest_checkpoint() != os.path.join(self._checkpoint_dir, f"ckpt-{self.step}"):
        self.save_checkpoint()
      metrics["interrupted"] = True
      return metrics
    if self.manager.latest_checkpoint is None or not self.manager.latest_checkpoint.endswith(
      f"-{self.step}"
    ):
      self.save_checkpoint()
    if log.validated_at != self.step:
      log.log_validation(self.step, self.validate())
    metrics["validation_accuracy"] = log.validation_accuracy
    metrics["train_seconds"] = time.time() - first_time
    return metrics

  def _run_steps(self, iterator, num_steps: int, interrupted: list) -> int:
    """Up to `num_steps` steps, fewer after a SIGTERM; returns how many ran.

    One step per call, so that a SIGTERM (handled between calls) stops after the
    current step, not after up to log_every of them; each step's loss and
    accuracy go to the divergence monitor.

    Raises:
      DivergedError: a divergence rule fired (see `train`).
    """
    one_step = tf.constant(1)
    done = 0
    while done < num_steps and not interrupted:
      if self.frozen_backbone and self.step >= self.config.freeze_backbone_steps:
        logging.info("step %d: the backbone trains from here on (unfrozen)", self.step)
        self._train_step_fn = self._make_train_loop()
      try:
        self._train_step_fn(iterator, one_step)
      except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        error = input_error(e, "data.train_file_pattern", self.data.train_file_pattern)
        if error is None:
          raise
        raise error from None
      done += 1
      self._observe_step()
    return done

  def _metric_totals(self) -> tuple[float, ...]:
    """Loss sum, loss count, correct and examples since the metrics' last reset."""
    loss, accuracy = self.train_loss, self.train_accuracy
    return tuple(float(v.numpy()) for v in (loss.total, loss.count, accuracy.total, accuracy.count))

  def _observe_step(self) -> None:
    """Gives the last step's mean loss and accuracy to the divergence monitor."""
    totals = self._metric_totals()
    loss_sum, loss_count, correct, examples = (
      now - before for now, before in zip(totals, self._totals_before)
    )
    self._totals_before = totals
    try:
      self.monitor.observe(self.step, loss_sum / max(loss_count, 1.0), correct, examples)
    except DivergedError as e:
      raise self._stopped(e) from None

  def _stopped(self, error: DivergedError) -> DivergedError:
    """`error` with the checkpoint kept and what to try (divergence.stop_message)."""
    advice = divergence.advice(error)
    message = divergence.stop_message(error, self.latest_checkpoint(), self.layout.root, advice)
    return type(error)(message, error.step, error.last_good)

  def _reset_train_metrics(self) -> None:
    self.train_loss.reset_state()
    self.train_accuracy.reset_state()
    for metric in self.term_losses.values():
      metric.reset_state()
    self._totals_before = (0.0, 0.0, 0.0, 0.0)

  def _window_metrics(self) -> dict:
    """The mean loss, accuracy, DELG terms of the steps since the last call, and the lr."""
    metrics = dict(
      loss=float(self.train_loss.result()),
      accuracy=float(self.train_accuracy.result()),
      lr=float(self.learning_rate(self.step)),
    )
    for name, metric in self.term_losses.items():
      metrics[name] = float(metric.result())
    self._reset_train_metrics()
    return metrics
