"""The `dolg-visualize` command: attention maps, match images and ranked lists in one HTML report.

  dolg-visualize --report_dir=report [parts]

  attention maps:   --logdir=runs/demo --attention_images=q_00000,q_00001
                    [--images_dir=runs/demo/benchmark/jpg]
  ranked lists:     --dataset_file_path=gnd.pkl --images_dir=jpg
                    --query_features_dir=features --index_features_dir=features
                    [--use_geometric_verification --gv_residual_threshold=4 ...]
  match images:     --match_pairs=q_00000:db_00012 (or, with the ranked lists,
                    --num_match_pairs=4) [--local_features_dir=features]

Writes `<report_dir>/index.html` and its PNGs (dolg_tf.visualization; the
folder is replaced whole, atomically). Each part is drawn when its inputs are
given:

* attention: the run's model (`--logdir`: its config.json and latest
  checkpoint, or `--checkpoint`, restored as dolg-export does) on each of
  `--attention_images`, shrunk to `--max_image_size`; DOLG's self-attention or
  DELG's keypoint attention as a heat map over the image, in labelled panels
  with a colour bar (visualization.attention);
* ranked lists, per-query AP and precision-recall curves: the retrieval of
  evaluation.evaluate (global descriptors, optional geometric
  verification), images `<images_dir>/<name><image_extension>`; the summary
  table names the ranking before and after re-ranking
  (visualization.retrieval_report);
* matches: local features (`<local_features_dir>/<name><local_suffix>`, DELF
  format) matched and verified with the --gv_* settings, inliers in green and
  rejected tentative matches in red, small images enlarged to a readable size
  (visualization.match_images); `--num_match_pairs` takes each of the first
  shown queries with its best-ranked positive.

An image is named either by a file path with an image extension or by a
ground-truth name under --images_dir. (The README's example pictures come from
`tools/readme_examples.py`.) Every bad input is one line
`dolg-visualize: error: ...` naming the file or flag, exit status 2;
everything is checked before the model is built.
"""

import os

from absl import flags

from dolg_tf import config as config_lib
from dolg_tf import run_layout
from dolg_tf.data import ground_truth
from dolg_tf.extraction import task_sources
from dolg_tf.io import image_loading
from dolg_tf.model import checkpoint_restore
from dolg_tf.retrieval import evaluation as evaluation_lib
from dolg_tf.retrieval import retrieval_config
from dolg_tf.utils import cli
from dolg_tf.visualization import attention, match_images, report_html, retrieval_report

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The command's flags (a second call is a no-op)."""
  if "attention_images" in flag_values:
    return
  f = flag_values
  flags.DEFINE_string(
    "report_dir", None, "Report folder (index.html + PNGs); replaced whole.", flag_values=f
  )
  flags.DEFINE_string("title", "", "Page title (default: what the report shows).", flag_values=f)
  flags.DEFINE_string(
    "logdir", "", "Training run folder (config.json, checkpoints/): attention.", flag_values=f
  )
  flags.DEFINE_string(
    "checkpoint", "", "Checkpoint prefix; default: the latest in --logdir.", flag_values=f
  )
  flags.DEFINE_list(
    "attention_images",
    [],
    "Images whose attention is drawn (paths, or names in --images_dir).",
    flag_values=f,
  )
  flags.DEFINE_integer(
    "max_image_size",
    512,
    "Longest side of the images given to the model and drawn (0: as is).",
    flag_values=f,
  )
  flags.DEFINE_string(
    "dataset_file_path", "", "gnd_*.pkl or .mat ground truth: ranked lists.", flag_values=f
  )
  flags.DEFINE_string(
    "images_dir", "", "Folder of the <name><image_extension> images.", flag_values=f
  )
  flags.DEFINE_string(
    "image_extension", ".jpg", "Extension of the images named by the gnd.", flag_values=f
  )
  flags.DEFINE_string(
    "query_features_dir", "", "Query descriptors (folder or shard glob).", flag_values=f
  )
  flags.DEFINE_string(
    "index_features_dir", "", "Index descriptors (folder or shard glob).", flag_values=f
  )
  flags.DEFINE_integer("top_k", 10, "Results drawn per query.", flag_values=f)
  flags.DEFINE_integer(
    "max_queries", 50, "Ranked lists drawn (evenly spread; 0 = all).", flag_values=f
  )
  flags.DEFINE_integer("thumb_size", 96, "Thumbnail side in pixels.", flag_values=f)
  _define_match_flags(f)
  _retrieval_flags(f)


def _retrieval_flags(f: flags.FlagValues) -> dict[str, str]:
  """RetrievalConfig's flags as dolg-retrieve's: the top-level fields and --gv_*.

  --suffix, --local_suffix, --num_ranked, --use_geometric_verification and
  the geometric verification settings; a second call only returns the mapping.
  """
  return retrieval_config.define_flags(f, sections=("geometric_verification",))


def _define_match_flags(f: flags.FlagValues) -> None:
  flags.DEFINE_list(
    "match_pairs",
    [],
    "Image pairs a:b (paths, or names in --images_dir) for match images.",
    flag_values=f,
  )
  flags.DEFINE_integer(
    "num_match_pairs",
    0,
    "With the ranked lists: match images of the first N queries' best positive.",
    flag_values=f,
  )
  flags.DEFINE_string(
    "local_features_dir",
    "",
    "Folder of <name><local_suffix> local features (default: the query / index features dirs).",
    flag_values=f,
  )
  flags.DEFINE_bool(
    "query_crop", False, "Queries' local features were extracted from their bbx.", flag_values=f
  )


def _image_path(spec: str, what: str) -> str:
  """A path for an image spec: a file path with an image extension, or a name in --images_dir."""
  if os.path.splitext(spec)[1].lower() in task_sources.IMAGE_EXTENSIONS:
    path = cli.resolve_path(spec)
  elif FLAGS.images_dir:
    try:
      path = retrieval_report.gnd_image_path(
        cli.resolve_path(FLAGS.images_dir), spec, FLAGS.image_extension
      )
    except ValueError as e:
      raise cli.UserError(f"{what}: {e}") from e
  else:
    raise cli.UserError(f"{what} {spec!r}: not an image path, and no --images_dir to find it in")
  if not os.path.isfile(path):
    raise cli.UserError(f"{what}: {path}: image not found")
  return path


def _features_path(name: str, default_dir: str, what: str, local_suffix: str) -> str:
  folder = cli.resolve_path(FLAGS.local_features_dir or default_dir)
  if not folder:
    raise cli.UserError(f"{what} {name!r}: no --local_features_dir for its local features")
  path = os.path.join(folder, os.path.splitext(os.path.basename(name))[0] + local_suffix)
  if not os.path.isfile(path):
    raise cli.UserError(f"{what}: {path}: local features not found")
  return path


def _query_box(gt, name: str):
  if not FLAGS.query_crop or gt is None or name not in gt.qimlist:
    return None
  box = gt.gnd[gt.qimlist.index(name)]["bbx"]
  return None if box is None else tuple(float(v) for v in box)


def _match_pair(gt, a: str, b: str, whats: tuple[str, str], local_suffix: str):
  """The match_images.MatchPair of images a and b (`whats` name them in errors)."""
  return match_images.MatchPair(
    a,
    _image_path(a, whats[0]),
    _features_path(a, FLAGS.query_features_dir, whats[0], local_suffix),
    b,
    _image_path(b, whats[1]),
    _features_path(b, FLAGS.index_features_dir, whats[1], local_suffix),
    _query_box(gt, a),
  )


def _explicit_pairs(gt, local_suffix: str) -> list[match_images.MatchPair]:
  pairs = []
  for spec in FLAGS.match_pairs:
    if spec.count(":") != 1:
      raise cli.UserError(f"--match_pairs: {spec!r} is not a:b")
    a, b = spec.split(":")
    pairs.append(_match_pair(gt, a, b, ("--match_pairs", "--match_pairs"), local_suffix))
  return pairs


def _ranked_pairs(gt, evaluation, local_suffix: str) -> list[match_images.MatchPair]:
  """Each of the first shown queries with its best-ranked positive (--num_match_pairs)."""
  # After geometric verification the ranking differs per protocol.
  ranks = evaluation.reranked or evaluation.ranks
  shown = retrieval_report.shown_queries(gt.num_queries, FLAGS.max_queries)
  medium = ranks["medium"] if isinstance(ranks, dict) else ranks
  chosen = match_images.best_positive_pairs(gt, medium, shown)[: FLAGS.num_match_pairs]
  whats = ("query", "index image")
  return [_match_pair(gt, gt.qimlist[q], gt.imlist[i], whats, local_suffix) for q, i in chosen]


def _check_flags() -> None:
  """Refuses missing or contradicting flags (one line each), before anything is read."""
  if not FLAGS.report_dir:
    raise cli.UserError("--report_dir is required")
  if FLAGS.attention_images and not FLAGS.logdir:
    raise cli.UserError("--attention_images needs --logdir (the run whose model is drawn)")
  if FLAGS.logdir and not FLAGS.attention_images:
    raise cli.UserError("--logdir needs --attention_images (the images to draw attention on)")
  retrieval = FLAGS.dataset_file_path
  if FLAGS.num_match_pairs and not retrieval:
    raise cli.UserError("--num_match_pairs needs --dataset_file_path (it picks ranked positives)")
  if retrieval:
    for name in ("query_features_dir", "index_features_dir", "images_dir"):
      if not FLAGS[name].value:
        raise cli.UserError(f"--dataset_file_path needs --{name}")
  if not (FLAGS.attention_images or retrieval or FLAGS.match_pairs):
    raise cli.UserError(
      "nothing to draw: give --attention_images, --dataset_file_path or --match_pairs"
    )
  if FLAGS.logdir:
    config_path = run_layout.RunLayout(cli.resolve_path(FLAGS.logdir)).config
    if not os.path.isfile(config_path):
      raise cli.UserError(f"--logdir: {config_path}: run config not found")


def _evaluate(gt, config: retrieval_config.RetrievalConfig):
  """The evaluation.Evaluation of --dataset_file_path (ground truth `gt`), or None."""
  if gt is None:
    return None
  return evaluation_lib.evaluate(
    cli.resolve_path(FLAGS.dataset_file_path),
    cli.resolve_path(FLAGS.query_features_dir),
    cli.resolve_path(FLAGS.index_features_dir),
    config=config,
  )


def _add_attention(builder, model, model_name: str, paths) -> None:
  builder.section(
    f"Attention ({model_name.upper()})",
    "Each image beside its attention heat map (scaled per image; colour bar: blue low, red high).",
  )
  for path in paths:
    image, overlay = attention.attention_picture(
      model, image_loading.load_image(path), FLAGS.max_image_size
    )
    name = os.path.splitext(os.path.basename(path))[0]
    figure = attention.attention_figure(
      [image, overlay], ["image", f"{model_name.upper()} attention"]
    )
    builder.add_image(f"attention_{name}", figure, name)


def _add_matches(builder, pairs, gv) -> None:
  builder.section(
    "Matches",
    "Local feature matches: RANSAC inliers in green, rejected tentative matches in red.",
  )
  for pair in pairs:
    picture, inliers = match_images.match_picture(pair, gv, FLAGS.max_image_size)
    builder.add_image(
      f"matches_{pair.name_a}_{pair.name_b}",
      picture,
      f"{pair.name_a} - {pair.name_b}: {inliers} inliers",
      match_images.PNG_COLORS,
      match_images.MARK_COLORS,
    )


def _write(config: retrieval_config.RetrievalConfig, attention_paths) -> str:
  """Evaluates, restores the model and writes the report; returns index.html's path."""
  gt = None
  if FLAGS.dataset_file_path:
    gt = ground_truth.load_ground_truth(cli.resolve_path(FLAGS.dataset_file_path))
  pairs = _explicit_pairs(gt, config.local_suffix)  # checked before the (long) evaluation
  evaluation = _evaluate(gt, config)
  if evaluation is not None and FLAGS.num_match_pairs:
    pairs += _ranked_pairs(gt, evaluation, config.local_suffix)
  model = model_name = None
  if FLAGS.logdir:
    experiment, model = checkpoint_restore.restore_model(
      cli.resolve_path(FLAGS.logdir), cli.resolve_path(FLAGS.checkpoint)
    )
    model_name = experiment.model.name

  def fill(builder):
    if model is not None:
      _add_attention(builder, model, model_name, attention_paths)
    if pairs:
      _add_matches(builder, pairs, config.geometric_verification)
    if evaluation is not None:
      retrieval_report.add_evaluation_sections(
        builder,
        gt,
        evaluation,
        cli.resolve_path(FLAGS.images_dir),
        image_extension=FLAGS.image_extension,
        top_k=FLAGS.top_k,
        max_queries=FLAGS.max_queries,
        thumb_size=FLAGS.thumb_size,
      )

  return report_html.write_report(
    cli.resolve_path(FLAGS.report_dir), FLAGS.title or "dolg_tf results", fill
  )


def main(argv):
  del argv  # unused
  _check_flags()
  config = retrieval_config.from_flags(_retrieval_flags(FLAGS))
  try:
    attention_paths = [_image_path(s, "--attention_images") for s in FLAGS.attention_images]
    path = _write(config, attention_paths)
  except (
    OSError,
    ValueError,
    KeyError,
    config_lib.ConfigError,
    checkpoint_restore.CheckpointMismatchError,
  ) as e:
    raise cli.UserError(cli.error_message(e)) from e
  print(f"report: {path}")


def run():
  """The `dolg-visualize` command."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
