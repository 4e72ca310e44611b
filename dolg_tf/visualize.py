"""The `dolg-visualize` command: attention maps, match images and ranked lists in one HTML report.

  dolg-visualize --report_dir=report [parts]

  attention maps:   --logdir=runs/demo --attention_images=q_00000,q_00001
                    [--images_dir=runs/demo/benchmark/jpg]
  ranked lists:     --dataset_file_path=gnd.pkl --images_dir=jpg
                    --query_features_dir=features --index_features_dir=features
                    [--use_geometric_verification --gv_residual_threshold=4 ...]
  match images:     --match_pairs=q_00000:db_00012 (or, with the ranked lists,
                    --num_match_pairs=4) [--local_features_dir=features]

Writes `<report_dir>/index.html` and its PNGs (dolg_tf.retrieval.report; the
folder is replaced whole, atomically). Each part is drawn when its inputs are
given:

* attention: the run's model (`--logdir`: its config.json and latest
  checkpoint, or `--checkpoint`, restored as dolg-export does) on each of
  `--attention_images`, shrunk to `--max_image_size`; DOLG's self-attention or
  DELG's keypoint attention as a heat map over the image;
* ranked lists, per-query AP and precision-recall curves: the retrieval of
  perform_retrieval.evaluate (global descriptors, optional geometric
  verification), images `<images_dir>/<name><image_extension>`;
* matches: local features (`<local_features_dir>/<name><local_suffix>`, DELF
  format) matched and verified with the --gv_* settings, inliers in green and
  rejected tentative matches in red; `--num_match_pairs` takes each of the
  first shown queries with its best-ranked positive.

An image is named either by a file path with an image extension or by a
ground-truth name under --images_dir. `--readme_examples=docs/images` writes
the README's small example pictures from the demos' run folders instead.
Every bad input is one line `dolg-visualize: error: ...` naming the file or
flag, exit status 2; everything is checked before the model is built.
"""

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import flags, logging

from dolg_tf import config as config_lib
from dolg_tf import demo, run_layout
from dolg_tf.data import ground_truth
from dolg_tf.extraction import pipeline
from dolg_tf.io import feature_io, image_loading
from dolg_tf.keras_api import keras
from dolg_tf.model import checkpoint_restore
from dolg_tf.retrieval import perform_retrieval, report, rerank
from dolg_tf.utils import cli, drawing, images

FLAGS = flags.FLAGS


def attention_map(model: keras.Model, image: np.ndarray) -> np.ndarray:
  """The model's attention on an RGB uint8 image: float32 [h, w] at the local branch's stride.

  DOLG: the self-attention of its local branch; DELG: the keypoint attention
  (both the "attention" output of `call(..., return_intermediates=True)`).
  """
  batch = tf.convert_to_tensor(np.asarray(image, np.float32)[None])
  outputs = model(batch, training=False, return_intermediates=True)
  return outputs["attention"].numpy()[0, ..., 0]


def attention_picture(
  model: keras.Model, image: np.ndarray, max_image_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
  """(the image as the model saw it, shrunk to `max_image_size`; its attention overlay)."""
  if max_image_size > 0:
    image = drawing.fit(image, max_image_size)[0]
  return image, report.attention_overlay(image, attention_map(model, image))


@dataclasses.dataclass(frozen=True)
class MatchPair:
  """Two images and their local feature files; `box_a` crops image a (a cropped query)."""

  name_a: str
  image_a: str
  features_a: str
  name_b: str
  image_b: str
  features_b: str
  box_a: tuple[float, ...] | None = None


def match_picture(
  pair: MatchPair,
  config: rerank.GeometricVerificationConfig | None = None,
  max_side: int = 512,
) -> tuple[np.ndarray, int]:
  """The match image of a pair (report.match_image) and its inlier count.

  Raises:
    FileNotFoundError / IOError / ValueError: an unreadable image or feature file (named).
  """
  features_a = feature_io.read_from_file(pair.features_a)
  features_b = feature_io.read_from_file(pair.features_b)
  image_a = image_loading.load_image(pair.image_a)
  if pair.box_a is not None:
    image_a = image_loading.crop_box(image_a, pair.box_a)
  image_b = image_loading.load_image(pair.image_b)
  verified = report.verify_pair(features_a, features_b, config)
  picture = report.match_image(
    image_a,
    image_b,
    features_a.locations,
    features_b.locations,
    verified.matches,
    verified.inliers,
    max_side=max_side,
    title=f"{pair.name_a} - {pair.name_b}: {verified.num_inliers} inliers / "
    f"{len(verified.matches)} tentative matches",
  )
  return picture, verified.num_inliers


def best_positive_pairs(
  gt: ground_truth.RevisitedGroundTruth, ranks: np.ndarray, queries: Sequence[int]
) -> list[tuple[int, int]]:
  """(query, database index) of each query's best-ranked easy or hard image (if it has one)."""
  pairs = []
  for q in queries:
    positives = set(np.concatenate([gt.gnd[q]["easy"], gt.gnd[q]["hard"]]).tolist())
    hit = next((int(i) for i in ranks[q] if int(i) in positives), None)
    if hit is not None:
      pairs.append((q, hit))
  return pairs


# --------------------------------------------------------------------------- flags


def define_flags():
  flags.DEFINE_string("report_dir", None, "Report folder (index.html + PNGs); replaced whole.")
  flags.DEFINE_string("title", "", "Page title (default: what the report shows).")
  flags.DEFINE_string("logdir", "", "Training run folder (config.json, checkpoints/): attention.")
  flags.DEFINE_string("checkpoint", "", "Checkpoint prefix; default: the latest in --logdir.")
  flags.DEFINE_list(
    "attention_images", [], "Images whose attention is drawn (paths, or names in --images_dir)."
  )
  flags.DEFINE_integer(
    "max_image_size", 512, "Longest side of the images given to the model and drawn (0: as is)."
  )
  flags.DEFINE_string("dataset_file_path", "", "gnd_*.pkl or .mat ground truth: ranked lists.")
  flags.DEFINE_string("images_dir", "", "Folder of the <name><image_extension> images.")
  flags.DEFINE_string("image_extension", ".jpg", "Extension of the images named by the gnd.")
  flags.DEFINE_string("query_features_dir", "", "Query descriptors (folder or shard glob).")
  flags.DEFINE_string("index_features_dir", "", "Index descriptors (folder or shard glob).")
  flags.DEFINE_string("suffix", "", "Per-image global descriptor suffix (default .dolg_global).")
  flags.DEFINE_integer("top_k", 10, "Results drawn per query.")
  flags.DEFINE_integer("max_queries", 50, "Ranked lists drawn (evenly spread; 0 = all).")
  flags.DEFINE_integer("thumb_size", 96, "Thumbnail side in pixels.")
  flags.DEFINE_bool(
    "use_geometric_verification", False, "Rank with geometric verification (DELG local features)."
  )
  flags.DEFINE_list(
    "match_pairs", [], "Image pairs a:b (paths, or names in --images_dir) for match images."
  )
  flags.DEFINE_integer(
    "num_match_pairs",
    0,
    "With the ranked lists: match images of the first N queries' best positive.",
  )
  flags.DEFINE_string(
    "local_features_dir",
    "",
    "Folder of <name><local_suffix> local features (default: the query / index features dirs).",
  )
  flags.DEFINE_string("local_suffix", rerank.LOCAL_SUFFIX, "Local feature file suffix.")
  flags.DEFINE_bool("query_crop", False, "Queries' local features were extracted from their bbx.")
  flags.DEFINE_string(
    "readme_examples",
    "",
    "Write the README's example PNGs into this folder (from --demo_workdirs).",
  )
  flags.DEFINE_list(
    "demo_workdirs", ["runs/demo", "runs/demo_delg"], "The DOLG and DELG demos' workdirs."
  )
  perform_retrieval.define_geometric_verification_flags()


def _image_path(spec: str, what: str) -> str:
  """A path for an image spec: a file path with an image extension, or a name in --images_dir."""
  if os.path.splitext(spec)[1].lower() in pipeline.IMAGE_EXTENSIONS:
    path = cli.resolve_path(spec)
  elif FLAGS.images_dir:
    try:
      path = report.gnd_image_path(cli.resolve_path(FLAGS.images_dir), spec, FLAGS.image_extension)
    except ValueError as e:
      raise cli.UserError(f"{what}: {e}") from e
  else:
    raise cli.UserError(f"{what} {spec!r}: not an image path, and no --images_dir to find it in")
  if not os.path.isfile(path):
    raise cli.UserError(f"{what}: {path}: image not found")
  return path


def _features_path(name: str, default_dir: str, what: str) -> str:
  folder = cli.resolve_path(FLAGS.local_features_dir or default_dir)
  if not folder:
    raise cli.UserError(f"{what} {name!r}: no --local_features_dir for its local features")
  path = os.path.join(folder, os.path.splitext(os.path.basename(name))[0] + FLAGS.local_suffix)
  if not os.path.isfile(path):
    raise cli.UserError(f"{what}: {path}: local features not found")
  return path


def _query_box(gt, name: str):
  if not FLAGS.query_crop or gt is None or name not in gt.qimlist:
    return None
  box = gt.gnd[gt.qimlist.index(name)]["bbx"]
  return None if box is None else tuple(float(v) for v in box)


def _explicit_pairs(gt) -> list[MatchPair]:
  pairs = []
  for spec in FLAGS.match_pairs:
    if spec.count(":") != 1:
      raise cli.UserError(f"--match_pairs: {spec!r} is not a:b")
    a, b = spec.split(":")
    pairs.append(
      MatchPair(
        a,
        _image_path(a, "--match_pairs"),
        _features_path(a, FLAGS.query_features_dir, "--match_pairs"),
        b,
        _image_path(b, "--match_pairs"),
        _features_path(b, FLAGS.index_features_dir, "--match_pairs"),
        _query_box(gt, a),
      )
    )
  return pairs


def _load_model():
  if not FLAGS.logdir:
    return None, ""
  experiment, model = checkpoint_restore.restore_model(
    cli.resolve_path(FLAGS.logdir), cli.resolve_path(FLAGS.checkpoint)
  )
  return model, experiment.model.name


def main(argv):
  del argv  # unused
  if FLAGS.readme_examples:
    write_readme_examples(FLAGS.readme_examples, *FLAGS.demo_workdirs[:2])
    return
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
  gv = perform_retrieval.geometric_verification_from_flags()
  try:
    attention_paths = [_image_path(s, "--attention_images") for s in FLAGS.attention_images]
    gt = evaluation = None
    if retrieval:
      gnd_path = cli.resolve_path(FLAGS.dataset_file_path)
      gt = ground_truth.load_ground_truth(gnd_path)
    pairs = _explicit_pairs(gt)  # checked before the (long) evaluation
    if retrieval:
      kwargs = {"suffix": FLAGS.suffix} if FLAGS.suffix else {}
      evaluation = perform_retrieval.evaluate(
        gnd_path,
        cli.resolve_path(FLAGS.query_features_dir),
        cli.resolve_path(FLAGS.index_features_dir),
        geometric_verification=gv if FLAGS.use_geometric_verification else None,
        local_suffix=FLAGS.local_suffix,
        **kwargs,
      )
    ranks = None
    if evaluation is not None:
      # After geometric verification the ranking differs per protocol.
      ranks = evaluation.reranked or evaluation.ranks
      shown = report.shown_queries(gt.num_queries, FLAGS.max_queries)
      medium = ranks["medium"] if isinstance(ranks, dict) else ranks
      for q, i in best_positive_pairs(gt, medium, shown)[: FLAGS.num_match_pairs]:
        a, b = gt.qimlist[q], gt.imlist[i]
        pairs.append(
          MatchPair(
            a,
            _image_path(a, "query"),
            _features_path(a, FLAGS.query_features_dir, "query"),
            b,
            _image_path(b, "index image"),
            _features_path(b, FLAGS.index_features_dir, "index image"),
            _query_box(gt, a),
          )
        )
    model, model_name = _load_model()

    def fill(builder):
      if model is not None:
        builder.section(
          f"Attention ({model_name.upper()})",
          "Heat map of the attention over the image (blue: low, red: high).",
        )
        for path in attention_paths:
          image, overlay = attention_picture(
            model, image_loading.load_image(path), FLAGS.max_image_size
          )
          name = os.path.splitext(os.path.basename(path))[0]
          builder.add_image(f"attention_{name}", drawing.hstack([image, overlay], gap=4), name)
      if pairs:
        builder.section(
          "Matches",
          "Local feature matches: RANSAC inliers in green, rejected tentative matches in red.",
        )
        for pair in pairs:
          picture, inliers = match_picture(pair, gv, FLAGS.max_image_size)
          builder.add_image(
            f"matches_{pair.name_a}_{pair.name_b}",
            picture,
            f"{pair.name_a} - {pair.name_b}: {inliers} inliers",
          )
      if evaluation is not None:
        builder.section("Evaluation")
        builder.add_text(evaluation.summary, preformatted=True)
        report.add_retrieval_sections(
          builder,
          gt,
          ranks,
          cli.resolve_path(FLAGS.images_dir),
          evaluation.results,
          image_extension=FLAGS.image_extension,
          top_k=FLAGS.top_k,
          max_queries=FLAGS.max_queries,
          thumb_size=FLAGS.thumb_size,
        )

    path = report.write_report(
      cli.resolve_path(FLAGS.report_dir), FLAGS.title or "dolg_tf results", fill
    )
  except (
    OSError,
    ValueError,
    KeyError,
    config_lib.ConfigError,
    checkpoint_restore.CheckpointMismatchError,
  ) as e:
    raise cli.UserError(cli.error_message(e)) from e
  print(f"report: {path}")


# --------------------------------------------------------------------------- README pictures

README_EXAMPLES = (
  "attention.png",
  "matches.png",
  "ranked_list.png",
  "ap_per_query.png",
  "precision_recall.png",
)
# Palette sizes of the README's PNGs (drawing.encode_png): small files, no visible banding.
_PHOTO_COLORS = 128


def _demo_inputs(workdir: str, suffix: str) -> tuple[str, str, str]:
  """(gnd path, images folder, trained features folder) of a demo workdir, checked."""
  benchmark = os.path.join(workdir, "benchmark")
  paths = (
    os.path.join(benchmark, "gnd_synthetic.pkl"),
    os.path.join(benchmark, "jpg"),
    os.path.join(workdir, "features_trained"),
  )
  for path in paths:
    if not os.path.exists(path):
      raise cli.UserError(f"{path}: not found (run the demo first: dolg-demo --workdir={workdir})")
  if not any(n.endswith(suffix) for n in os.listdir(paths[2])):
    raise cli.UserError(f"{paths[2]}: no *{suffix} files (the demo has not finished)")
  return paths


def _pick_query(gt, ranks: np.ndarray, results, top_k: int) -> int:
  """A query whose top-k shows most kinds of labels (then the higher medium AP)."""

  def key(q):
    kinds = len(set(report.gt_labels(gt.gnd[q], ranks[q, :top_k])))
    ap = results["medium"].aps[q]
    return (kinds, 0.0 if np.isnan(ap) else ap)

  return max(range(gt.num_queries), key=key)


def _enlarged(image: np.ndarray, factor: int) -> np.ndarray:
  return drawing.resize(image, image.shape[1] * factor, image.shape[0] * factor)


def write_readme_examples(
  output_dir: str, dolg_workdir: str = "runs/demo", delg_workdir: str = "runs/demo_delg"
) -> list[str]:
  """The README's example pictures (README_EXAMPLES) from the two demos' outputs.

  From the DOLG demo: a ranked list, per-query AP and precision-recall plots
  of its trained model; attention of both demos' models on that query; from
  the DELG demo: the match image of that query and the positive with the
  most inliers (the demo's geometric verification settings). The 128 px
  benchmark views are drawn at 2x.

  Returns:
    The written paths.

  Raises:
    cli.UserError: a demo output is missing.
  """
  dolg_workdir, delg_workdir = cli.resolve_path(dolg_workdir), cli.resolve_path(delg_workdir)
  output_dir = cli.resolve_path(output_dir)
  gnd_path, images_dir, features = _demo_inputs(dolg_workdir, ".dolg_global")
  delg_gnd_path, delg_images, delg_features = _demo_inputs(delg_workdir, rerank.LOCAL_SUFFIX)
  for run in (dolg_workdir, delg_workdir):
    if not os.path.isfile(run_layout.RunLayout(run).config):
      raise cli.UserError(f"{run_layout.RunLayout(run).config}: run config not found")
  os.makedirs(output_dir, exist_ok=True)
  gt = ground_truth.load_ground_truth(gnd_path)
  evaluation = perform_retrieval.evaluate(gnd_path, features, features)
  ranks, results = evaluation.ranks, evaluation.results
  top_k = 8
  q = _pick_query(gt, ranks, results, top_k)
  name = gt.qimlist[q]
  logging.info("README examples: query %s", name)

  def load(folder, image_name):
    return image_loading.load_image(report.gnd_image_path(folder, image_name))

  written = []

  def save(filename, image_or_png, colors=_PHOTO_COLORS):
    path = os.path.join(output_dir, filename)
    if isinstance(image_or_png, bytes):
      image_or_png = np.asarray(images.decode_image(image_or_png))
    drawing.save_png(path, image_or_png, colors)
    written.append(path)

  query = load(images_dir, name)
  ranking = [int(i) for i in ranks[q, :top_k]]
  labels = report.gt_labels(gt.gnd[q], ranking)
  aps = " ".join(f"{p[0].upper()} {100 * results[p].aps[q]:.0f}" for p in ground_truth.PROTOCOLS)
  save(
    "ranked_list.png",
    report.ranked_list_image(
      query,
      [load(images_dir, gt.imlist[i]) for i in ranking],
      labels,
      gt.gnd[q]["bbx"],
      f"{name}  AP % {aps}",
      thumb_size=72,
    ),
  )
  save("ap_per_query.png", report.ap_plot_png(results, list(gt.qimlist)), 64)
  save("precision_recall.png", report.pr_plot_png({p: ranks for p in results}, gt, results), 64)

  panels = [_enlarged(query, 2)]
  captions = ["image"]
  for label, run in (("DOLG", dolg_workdir), ("DELG", delg_workdir)):
    _, model = checkpoint_restore.restore_model(run)
    panels.append(report.attention_overlay(panels[0], attention_map(model, query)))
    captions.append(f"{label} attention")
  strips = [drawing.text_strip(p.shape[1], 16, c, 12) for p, c in zip(panels, captions)]
  columns = [drawing.vstack([s, p]) for s, p in zip(strips, panels)]
  save("attention.png", drawing.hstack(columns, gap=6))

  delg_gt = ground_truth.load_ground_truth(delg_gnd_path)
  delg_q = delg_gt.qimlist.index(name) if name in delg_gt.qimlist else 0
  config = demo.DEMO_GEOMETRIC_VERIFICATION
  query_name = delg_gt.qimlist[delg_q]
  query_features = feature_io.read_from_file(
    os.path.join(delg_features, query_name + rerank.LOCAL_SUFFIX)
  )
  best = None
  for kind in ("hard", "easy"):
    for i in delg_gt.gnd[delg_q][kind]:
      index_name = delg_gt.imlist[int(i)]
      index_features = feature_io.read_from_file(
        os.path.join(delg_features, index_name + rerank.LOCAL_SUFFIX)
      )
      verified = report.verify_pair(query_features, index_features, config)
      if best is None or verified.num_inliers > best[0]:
        best = (verified.num_inliers, index_name, index_features, verified)
    if best is not None and best[0] >= 10:
      break
  if best is None:
    raise cli.UserError(f"{delg_gnd_path}: query {query_name} has no positives")
  num_inliers, index_name, index_features, verified = best
  factor = 2
  save(
    "matches.png",
    report.match_image(
      _enlarged(load(delg_images, query_name), factor),
      _enlarged(load(delg_images, index_name), factor),
      query_features.locations * factor,
      index_features.locations * factor,
      verified.matches,
      verified.inliers,
      title=f"{query_name} - {index_name}: {num_inliers} inliers / "
      f"{len(verified.matches)} tentative matches (DELG)",
      max_outliers=25,
    ),
  )
  for path in written:
    print(f"{path}: {os.path.getsize(path) // 1024} KB")
  return written


def run():
  """The `dolg-visualize` command."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
