"""The inputs every extraction command takes: config, images, output folder.

extract_features (one machine) and beam_extract (Apache Beam) share these
flags and read them the same way:

  --config (DELF: --delf_config_path)    DolgConfig or DELF DelfConfig
  --output_dir (DELF: --output_features_dir)
  images, one of:
    --images_dir                         every image under a folder, recursively
    --list_images_path [--images_dir]    a list, one path per line
    --gnd_path (DELF: --dataset_file_path) --images_dir --image_set [--query_crop]
                                         Revisited Oxford/Paris ground truth
    --gldv2_csv_path --images_dir        a Google Landmarks v2 CSV (column id:
                                         index.csv, test.csv, train.csv); images
                                         at <images_dir>/<a>/<b>/<c>/<id>.jpg or
                                         <images_dir>/<id>.jpg

Entries of a list, ground-truth names and GLDv2 ids are joined to
--images_dir and must stay inside it (lexically, after os.path.normpath):
absolute entries elsewhere and `..` escapes become failures.tsv rows, never
opened, unless --allow_outside_images_dir; GLDv2 ids with '/', '\\' or '..'
always do. Without --images_dir, list entries are paths as written (relative
to the current directory).

`define_flags()` defines them (each command's run() calls it; nothing is
defined at import). `read_inputs()` checks them and returns the config, the
model folder and the tasks, raising cli.UserError (one line naming the flag or
file) on a bad one.
"""

import os

from absl import flags, logging

from dolg_tf.data import gldv2_files, ground_truth
from dolg_tf.extraction import task_sources
from dolg_tf.io import config_io
from dolg_tf.utils import cli, images

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the input flags of the extraction commands (a second call is a no-op).

  --batch_size's default None means 1 (`batch_size`).
  """
  if "config" in flag_values:
    return
  flags.DEFINE_string(
    "config",
    None,
    "DolgConfig or DELF DelfConfig text file (.pbtxt), e.g. protos/dolg.pbtxt.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "list_images_path", None, "Text file with one image path per line.", flag_values=flag_values
  )
  flags.DEFINE_string(
    "images_dir",
    None,
    "Folder of images: searched recursively without --list_images_path; the base of relative "
    "list entries with it; the folder of <name>.jpg files with --gnd_path.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "output_dir", None, "Folder for the descriptors (created if needed).", flag_values=flag_values
  )
  flags.DEFINE_string(
    "gnd_path",
    None,
    "Revisited Oxford/Paris ground truth (gnd_*.pkl or .mat): images to extract.",
    flag_values=flag_values,
  )
  flags.DEFINE_enum(
    "image_set",
    "query",
    ["query", "index"],
    "With --gnd_path: qimlist or imlist.",
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "query_crop",
    False,
    "With --gnd_path and query images: crop to their bbx.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "image_extension",
    ".jpg",
    "With --gnd_path: extension of the image files.",
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "allow_outside_images_dir",
    False,
    "Read list entries and ground-truth names that lead outside --images_dir (absolute paths, "
    "'..'); by default they are failures, never opened.",
    flag_values=flag_values,
  )
  _define_run_flags(flag_values)
  flags.DEFINE_string(
    "gldv2_csv_path",
    None,
    "Google Landmarks v2 CSV with an id column (index.csv, test.csv, train.csv): its images, "
    "found under --images_dir in the GLDv2 layout.",
    flag_values=flag_values,
  )
  _define_delf_alias_flags(flag_values)


def _define_run_flags(flag_values: flags.FlagValues) -> None:
  """--batch_size and --max_pixels."""
  flags.DEFINE_integer(
    "batch_size",
    None,
    "Up to this many images of one resized size go through the model in one forward (the "
    "export's batched signature; what an accelerator needs). Default 1: one image per forward.",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "max_pixels",
    images.MAX_PIXELS,
    "Images with more pixels (width x height, read from the header before decoding) are failures.",
    flag_values=flag_values,
  )


def _define_delf_alias_flags(flag_values: flags.FlagValues) -> None:
  """DELF's DELG script flags (delf/python/delg/extract_features.py), aliases of ours."""
  flags.DEFINE_string(
    "delf_config_path",
    None,
    "DELF's name for --config (DolgConfig or DelfConfig).",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "dataset_file_path",
    None,
    "DELF's name for --gnd_path; query images (--image_set=query) are cropped to their boxes.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "output_features_dir", None, "DELF's name for --output_dir.", flag_values=flag_values
  )


def _check_images_dir(needed_by: str) -> None:
  if not FLAGS.images_dir:
    raise cli.UserError(f"{needed_by} needs --images_dir (the folder of its images)")
  if not os.path.isdir(FLAGS.images_dir):
    raise cli.UserError(f"{FLAGS.images_dir}: images folder not found")


def _tasks(paths: list, boxes: dict | None = None, reasons: dict | None = None) -> list:
  """Tasks of `paths` under --images_dir; refused ones (`reasons`, outside it) are failures.

  Paths outside --images_dir are refused unless --allow_outside_images_dir.
  Refused tasks come first and take no part in the image-id collisions of
  task_sources.tasks_from_paths (a refused `../x.jpg` never displaces `x.jpg`).
  Their image id is their path: never an output name, and one failures.tsv
  row per refused entry (`../a/x.jpg` and `../b/x.jpg` would share `x`).
  """
  reasons = dict(reasons or {})
  if not FLAGS.allow_outside_images_dir:
    for path in paths:
      reasons[path] = reasons.get(path) or task_sources.outside_reason(path, FLAGS.images_dir)
  reasons = {path: reason for path, reason in reasons.items() if reason}
  refused = [task_sources.ImageTask(path, path, refused=reason) for path, reason in reasons.items()]
  return refused + task_sources.tasks_from_paths([p for p in paths if p not in reasons], boxes)


def tasks_from_flags() -> list:
  """The task_sources.ImageTasks the input flags describe.

  Raises:
    cli.UserError: a bad flag or a missing folder / list.
  """
  if FLAGS.gnd_path:
    if FLAGS.list_images_path or FLAGS.gldv2_csv_path:
      raise cli.UserError("--gnd_path, --list_images_path and --gldv2_csv_path are exclusive")
    _check_images_dir("--gnd_path")
    gnd = ground_truth.load_ground_truth(FLAGS.gnd_path)
    names = gnd.qimlist if FLAGS.image_set == "query" else gnd.imlist
    paths = [os.path.join(FLAGS.images_dir, n + FLAGS.image_extension) for n in names]
    boxes = None
    if FLAGS.image_set == "query":
      if FLAGS.query_crop:
        boxes = {n: q["bbx"] for n, q in zip(names, gnd.gnd) if q["bbx"] is not None}
        missing = len(names) - len(boxes)
        if missing:
          logging.warning("%s: %d queries have no bbx; not cropped", FLAGS.gnd_path, missing)
      else:
        logging.warning("queries are not cropped; the ROxf/RPar protocol crops them (--query_crop)")
    return _tasks(paths, boxes)
  if FLAGS.query_crop:
    raise cli.UserError("--query_crop needs --gnd_path")
  if FLAGS.gldv2_csv_path:
    if FLAGS.list_images_path:
      raise cli.UserError("--gldv2_csv_path and --list_images_path are exclusive")
    _check_images_dir("--gldv2_csv_path")
    ids = task_sources.read_csv_image_ids(FLAGS.gldv2_csv_path)
    paths = [gldv2_files.image_path(FLAGS.images_dir, i) for i in ids]
    bad_ids = {p: task_sources.gldv2_id_reason(i) for p, i in zip(paths, ids)}
    return _tasks(paths, reasons=bad_ids)
  if FLAGS.list_images_path:
    if FLAGS.images_dir and not os.path.isdir(FLAGS.images_dir):
      raise cli.UserError(f"{FLAGS.images_dir}: images folder not found")
    if not os.path.isfile(FLAGS.list_images_path):
      raise cli.UserError(f"{FLAGS.list_images_path}: image list not found")
    paths = task_sources.read_image_list(
      FLAGS.list_images_path, FLAGS.images_dir, FLAGS.allow_outside_images_dir
    )
    if FLAGS.images_dir:
      return _tasks(paths)
  elif FLAGS.images_dir:
    paths = task_sources.list_images(FLAGS.images_dir)
  else:
    raise cli.UserError("give --list_images_path, --images_dir, --gnd_path or --gldv2_csv_path")
  return task_sources.tasks_from_paths(paths)


# (project flag, DELF alias) pairs.
_DELF_ALIASES = (
  ("config", "delf_config_path"),
  ("gnd_path", "dataset_file_path"),
  ("output_dir", "output_features_dir"),
)


def apply_delf_aliases() -> None:
  """Copies DELF's flag values onto the project's flags (DELF's command line).

  With --dataset_file_path, query images are cropped to their boxes, as in
  DELF's script.

  Raises:
    cli.UserError: a flag and its DELF alias given with different values.
  """
  for name, alias in _DELF_ALIASES:
    ours, delf = getattr(FLAGS, name), getattr(FLAGS, alias)
    if delf is None:
      continue
    if ours is not None and ours != delf:
      raise cli.UserError(f"--{name}={ours} and --{alias}={delf} conflict; give one of them")
    setattr(FLAGS, name, delf)
    if alias == "dataset_file_path" and FLAGS.image_set == "query":
      FLAGS.query_crop = True


def check_run_flags() -> None:
  """Checks --batch_size and --max_pixels.

  Raises:
    cli.UserError: naming the flag.
  """
  if FLAGS.max_pixels < 1:
    raise cli.UserError(f"--max_pixels must be positive, got {FLAGS.max_pixels}")
  if FLAGS.batch_size is not None and FLAGS.batch_size < 1:
    raise cli.UserError(f"--batch_size must be >= 1, got {FLAGS.batch_size}")


def batch_size() -> int:
  """--batch_size, 1 when not given."""
  return FLAGS.batch_size or 1


def read_inputs():
  """(config, model_path, tasks) from the flags, DELF's aliases applied.

  Raises:
    cli.UserError: a missing or bad flag, config, model path, folder or list.
  """
  apply_delf_aliases()
  if not FLAGS.config:
    raise cli.UserError("--config is required")
  if not FLAGS.output_dir:
    raise cli.UserError("--output_dir is required")
  if not os.path.isfile(FLAGS.config):
    raise cli.UserError(f"{FLAGS.config}: config file not found")
  try:
    config = config_io.load_any_config(FLAGS.config)
    model_path = config_io.resolve_model_path(config, FLAGS.config)
    tasks = tasks_from_flags()
  except (OSError, ValueError) as e:
    raise cli.UserError(str(e)) from e
  return config, model_path, tasks
