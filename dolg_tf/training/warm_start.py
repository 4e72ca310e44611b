"""train.init_from: a fresh run's first weights from another run or a converted checkpoint.

The source is a dolg_tf run folder (its newest checkpoint under
`checkpoints/`), the output folder of dolg-convert (official DOLG) or
dolg-convert-delf (the same layout: `config.json`, `checkpoints/ckpt-1`), or
a checkpoint prefix. Every variable is mapped explicitly: the checkpoint key
each variable of the model and head is saved under (the object-graph path
tf.train.Checkpoint gives it, e.g. `model/backbone/.../kernel/.ATTRIBUTES/
VARIABLE_VALUE`) is read from the source and assigned, so no variable is
skipped without a word:

- the classifiers over the classes (the margin head `head/...` and DELG's
  attention classifier `model/attention_classifier/...`) are taken only when
  every one of their variables is in the source with the same shape; else they
  keep their fresh initialisation, reported in one warning line (another number
  of classes, head type or number of sub-centres);
- every other variable must be in the source with the same shape, and the
  source must hold no model variable this model lacks: else InitFromError names
  the source and the first such variables (another model section).

The optimizer state and the step are not taken: fine-tuning starts at step 0
with fresh momentum. The caller applies this only to a run without a
checkpoint of its own (a re-run resumes from its own checkpoint).
"""

import collections
import os

import tensorflow as tf
from absl import logging

from dolg_tf import config as config_lib
from dolg_tf import run_layout
from dolg_tf.model import checkpoint_restore
from dolg_tf.utils.error_text import first_line

# The checkpoint key suffix of a variable's value (tf.train.Checkpoint's naming).
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# In the keys of optimizer slots saved under their variable's path (Keras' legacy optimizers).
SLOT_MARK = "/.OPTIMIZER_SLOT/"
# Key prefixes of the classifiers over the classes: re-initialised when they do not fit.
CLASSIFIER_PREFIXES = {"head": "head/", "attention classifier": "model/attention_classifier/"}
# Variables named in an error at most.
NAMED_AT_MOST = 3


class InitFromError(ValueError):
  """train.init_from names no checkpoint, or one that does not fit the model; one line."""


def _escape(name: str) -> str:
  """A checkpoint path component as tf.train.Checkpoint writes it."""
  return name.replace(".", "..").replace("/", ".S")


def variable_keys(**objects) -> dict[str, tf.Variable]:
  """{checkpoint key: variable} of tf.train.Checkpoint(**objects), as its save would name them.

  Breadth-first over the object graph (tf.train.TrackableView), each variable
  named by the first path that reaches it, which is how tf.train.Checkpoint
  names the values it saves.
  """
  root = tf.train.Checkpoint(**objects)
  view = tf.train.TrackableView(root)
  paths = {id(root): ""}
  queue = collections.deque([root])
  keys = {}
  while queue:
    node = queue.popleft()
    for name, child in view.children(node).items():
      if id(child) in paths:
        continue
      paths[id(child)] = f"{paths[id(node)]}{_escape(name)}/"
      if isinstance(child, tf.Variable):
        keys[paths[id(child)].rstrip("/") + VALUE_SUFFIX] = child
      else:
        queue.append(child)
  return keys


def resolve_source(path: str) -> str:
  """The checkpoint prefix `path` names: a run or converter folder's newest, or a prefix.

  Raises:
    InitFromError: no checkpoint there (named).
  """
  if os.path.isdir(path):
    for directory in (run_layout.RunLayout(path).checkpoints, path):
      existing = checkpoint_restore.existing_checkpoints(directory)
      if existing:
        return existing[-1]
    raise InitFromError(
      f"train.init_from: no checkpoint in {path} (nor in its checkpoints/ folder); give a "
      "dolg_tf run folder, a dolg-convert / dolg-convert-delf output folder or a checkpoint prefix"
    )
  if tf.io.gfile.exists(path + ".index"):
    return path
  raise InitFromError(
    f"train.init_from: {path} is neither a folder nor a checkpoint prefix ({path}.index is missing)"
  )


def _classifier(key: str) -> str | None:
  return next((name for name, p in CLASSIFIER_PREFIXES.items() if key.startswith(p)), None)


def _short(key: str) -> str:
  """A key without the value suffix: `head/kernel`."""
  return key[: -len(VALUE_SUFFIX)] if key.endswith(VALUE_SUFFIX) else key


def _shape(shape) -> str:
  return "[" + ", ".join(str(d) for d in shape) + "]"


def _named(items: list[str]) -> str:
  more = f" and {len(items) - NAMED_AT_MOST} more" if len(items) > NAMED_AT_MOST else ""
  return ", ".join(items[:NAMED_AT_MOST]) + more


def plan(ours: dict[str, tf.Variable], source_shapes: dict[str, list], source: str):
  """(keys to load, {classifier: why it is re-initialised}); InitFromError if a variable misfits.

  Args:
    ours: {key: variable} (variable_keys).
    source_shapes: the source checkpoint's {key: shape}.
    source: the source named in messages.
  """
  misfits, reinit = [], {}
  for key, variable in ours.items():
    have = source_shapes.get(key)
    mine = variable.shape.as_list()
    if have is not None and list(have) == mine:
      continue
    name, classifier = _short(key), _classifier(key)
    if classifier is not None:
      reinit.setdefault(
        classifier,
        f"{name}: {_shape(have)} in {source}, {_shape(mine)} here"
        if have is not None
        else f"{name}: not in {source}",
      )
    elif have is not None:
      misfits.append(f"{name} ({_shape(have)} there, {_shape(mine)} here)")
    else:
      misfits.append(f"{name} (not in the source)")
  extra = [
    key
    for key in source_shapes
    if key.startswith("model/")
    and key.endswith(VALUE_SUFFIX)
    and SLOT_MARK not in key
    and key not in ours
  ]
  for key in extra:
    classifier = _classifier(key)
    if classifier is not None:
      reinit.setdefault(classifier, f"{_short(key)} in {source}, not here")
  extra = [_short(key) for key in extra if _classifier(key) is None]
  if misfits or extra:
    what = []
    if misfits:
      what.append(f"{len(misfits)} variable(s) of this model do not load: {_named(misfits)}")
    if extra:
      what.append(f"{len(extra)} it holds are not in this model: {_named(extra)}")
    raise InitFromError(f"train.init_from {source}: {'; '.join(what)}")
  keep = [k for k in ours if _classifier(k) not in reinit]
  return keep, reinit


def _model_differences(source_dir: str, model_config) -> str:
  """'; the model section differs from <dir>/config.json in a, b' or ''."""
  try:
    saved = config_lib.load_config_dict(source_dir).get("model") or {}
  except (FileNotFoundError, config_lib.ConfigError, OSError):
    return ""
  changed = [f"model.{k}" for k in config_lib.differences(saved, model_config.as_dict())]
  if not changed:
    return ""
  return f" (this config's model section differs from {source_dir}'s in {_named(changed)})"


def initialise(model, head, init_from: str, model_config=None) -> dict[str, str]:
  """Loads `init_from` into `model` and `head` (see the module doc); returns the re-initialised.

  Args:
    model: the built model (a RetrievalModel).
    head: the built margin head.
    init_from: a run or converter output folder, or a checkpoint prefix.
    model_config: this run's ModelConfig, to name the fields that differ from
      the source folder's config.json in an error.

  Returns:
    {classifier: why it kept its fresh initialisation} (also logged).

  Raises:
    InitFromError: no checkpoint, an unreadable one, or a variable that does
      not fit (the source and the first variables named).
  """
  prefix = resolve_source(init_from)
  try:
    reader = tf.train.load_checkpoint(prefix)
    source_shapes = reader.get_variable_to_shape_map()
  except (tf.errors.OpError, ValueError) as e:
    raise InitFromError(f"train.init_from {prefix}: not readable ({first_line(e)})") from None
  ours = variable_keys(model=model, head=head)
  try:
    keep, reinit = plan(ours, source_shapes, prefix)
  except InitFromError as e:
    hint = _model_differences(init_from, model_config) if model_config is not None else ""
    raise InitFromError(f"{e}{hint}") from None
  try:
    for key in keep:
      ours[key].assign(reader.get_tensor(key))
  except (tf.errors.OpError, ValueError) as e:
    raise InitFromError(f"train.init_from {prefix}: not readable ({first_line(e)})") from None
  logging.info("Initialised %d variables from %s (not its optimizer or step)", len(keep), prefix)
  if reinit:
    logging.warning(
      "train.init_from: re-initialised %s (another number of classes, head type or sub-centre "
      "count)",
      "; ".join(f"{name}: {why}" for name, why in reinit.items()),
    )
  return reinit
