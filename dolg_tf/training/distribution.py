"""The tf.distribute strategy of a training run, and which of its tasks is the chief."""

import tensorflow as tf
from official.common import distribute_utils

from dolg_tf import config as config_lib


def build_strategy(config: config_lib.TrainConfig) -> tf.distribute.Strategy:
  """The tf.distribute strategy named by the config (tf-models-official helper)."""
  if config.distribution_strategy == "one_device":
    device = "/gpu:0" if config.num_gpus > 0 else "/cpu:0"
    return tf.distribute.OneDeviceStrategy(device)
  return distribute_utils.get_distribution_strategy(
    distribution_strategy=config.distribution_strategy,
    num_gpus=config.num_gpus,
    tpu_address=config.tpu or None,
  )


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this task writes the run folder: the chief, worker 0 without one, or no cluster."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == "chief" or (
    resolver.task_type == "worker"
    and resolver.task_id == 0
    and "chief" not in resolver.cluster_spec().as_dict()
  )
