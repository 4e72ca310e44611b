"""Writes the README's example pictures (docs/images/*.png) from the two demos' run folders.

  python tools/readme_examples.py [--output_dir=docs/images]
      [--dolg_workdir=runs/demo] [--delg_workdir=runs/demo_delg]

Run `dolg-demo` and `dolg-demo --model=delg --workdir=runs/demo_delg` first.
From the DOLG demo: a ranked list, per-query AP and precision-recall plots of
its trained model, and the attention of both demos' models on that query; from
the DELG demo: the match image of that query and the positive with the most
inliers (the demo's geometric verification settings). Docs tooling, not part
of the package: it only calls the library (dolg_tf.visualization).
"""

import os
import sys

import numpy as np
from absl import flags, logging

# Run from a checkout without installing: the repository root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dolg_tf import demo, run_layout  # noqa: E402
from dolg_tf.data import ground_truth  # noqa: E402
from dolg_tf.io import feature_io, image_loading  # noqa: E402
from dolg_tf.model import checkpoint_restore  # noqa: E402
from dolg_tf.retrieval import evaluation as evaluation_lib  # noqa: E402
from dolg_tf.retrieval import rerank  # noqa: E402
from dolg_tf.utils import cli, images  # noqa: E402
from dolg_tf.visualization import (  # noqa: E402
  attention,
  drawing,
  match_images,
  plots,
  ranked_lists,
  retrieval_report,
)

FLAGS = flags.FLAGS

README_EXAMPLES = (
  "attention.png",
  "matches.png",
  "ranked_list.png",
  "ap_per_query.png",
  "precision_recall.png",
)
# Palette sizes of the README's PNGs (drawing.encode_png): small files, no visible banding.
PHOTO_COLORS = 128
PLOT_COLORS = 64
# The attention picture: its palette keeps a ramp of the colour bar (no banding).
ATTENTION_COLORS = 256
COLOUR_BAR_STEPS = 48
TOP_K = 8


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  if "dolg_workdir" in flag_values:
    return
  flags.DEFINE_string("output_dir", "docs/images", "Where the PNGs go.", flag_values=flag_values)
  flags.DEFINE_string(
    "dolg_workdir", "runs/demo", "The DOLG demo's workdir.", flag_values=flag_values
  )
  flags.DEFINE_string(
    "delg_workdir", "runs/demo_delg", "The DELG demo's workdir.", flag_values=flag_values
  )


def demo_inputs(workdir: str, suffix: str, model: str = "dolg") -> tuple[str, str, str]:
  """(gnd path, images folder, trained features folder) of a demo workdir, checked."""
  benchmark = os.path.join(workdir, "benchmark")
  paths = (
    os.path.join(benchmark, "gnd_synthetic.pkl"),
    os.path.join(benchmark, "jpg"),
    os.path.join(workdir, "features_trained"),
  )
  for path in paths:
    if not os.path.exists(path):
      raise cli.UserError(
        f"{path}: not found (run the demo first: dolg-demo --model={model} --workdir={workdir})"
      )
  if not any(n.endswith(suffix) for n in os.listdir(paths[2])):
    raise cli.UserError(f"{paths[2]}: no *{suffix} files (the demo has not finished)")
  config_path = run_layout.RunLayout(workdir).config
  if not os.path.isfile(config_path):
    raise cli.UserError(f"{config_path}: run config not found")
  return paths


def pick_query(gt, ranks: np.ndarray, results, top_k: int) -> int:
  """A query whose top-k shows most kinds of labels (then the higher medium AP)."""

  def key(q):
    kinds = len(set(ranked_lists.gt_labels(gt.gnd[q], ranks[q, :top_k])))
    ap = results["medium"].aps[q]
    return (kinds, 0.0 if np.isnan(ap) else ap)

  return max(range(gt.num_queries), key=key)


class _Writer:
  """Saves PNGs into one folder and remembers their paths."""

  def __init__(self, output_dir: str):
    os.makedirs(output_dir, exist_ok=True)
    self.output_dir = output_dir
    self.written: list[str] = []

  def save(self, filename: str, image_or_png, colors: int = PHOTO_COLORS, keep=None) -> None:
    path = os.path.join(self.output_dir, filename)
    if isinstance(image_or_png, bytes):
      image_or_png = np.asarray(images.decode_image(image_or_png))
    drawing.save_png(path, image_or_png, colors, keep)
    self.written.append(path)


def _load(folder: str, name: str) -> np.ndarray:
  return image_loading.load_image(retrieval_report.gnd_image_path(folder, name))


def _enlarged(image: np.ndarray, factor: int) -> np.ndarray:
  return drawing.resize(image, image.shape[1] * factor, image.shape[0] * factor)


def write_dolg_examples(writer: _Writer, dolg_workdir: str, delg_workdir: str) -> str:
  """Ranked list, plots and attention of the DOLG demo; returns the query's name."""
  gnd_path, images_dir, features = demo_inputs(dolg_workdir, ".dolg_global")
  gt = ground_truth.load_ground_truth(gnd_path)
  evaluation = evaluation_lib.evaluate(gnd_path, features, features)
  ranks, results = evaluation.ranks, evaluation.results
  q = pick_query(gt, ranks, results, TOP_K)
  name = gt.qimlist[q]
  logging.info("README examples: query %s", name)
  query = _load(images_dir, name)
  ranking = [int(i) for i in ranks[q, :TOP_K]]
  labels = ranked_lists.gt_labels(gt.gnd[q], ranking)
  aps = " ".join(f"{p[0].upper()} {100 * results[p].aps[q]:.0f}" for p in ground_truth.PROTOCOLS)
  writer.save(
    "ranked_list.png",
    ranked_lists.ranked_list_image(
      query,
      [_load(images_dir, gt.imlist[i]) for i in ranking],
      labels,
      gt.gnd[q]["bbx"],
      f"{name}  AP % {aps}",
      thumb_size=72,
    ),
  )
  writer.save("ap_per_query.png", plots.ap_plot_png(results, list(gt.qimlist)), PLOT_COLORS)
  writer.save(
    "precision_recall.png", plots.pr_plot_png({p: ranks for p in results}, gt, results), PLOT_COLORS
  )
  panels, labels = [_enlarged(query, 2)], ["image"]
  for label, run in (("DOLG", dolg_workdir), ("DELG", delg_workdir)):
    _, model = checkpoint_restore.restore_model(run)
    panels.append(attention.attention_overlay(panels[0], attention.attention_map(model, query)))
    labels.append(f"{label} attention")
  ramp = drawing.jet(np.linspace(0.0, 1.0, COLOUR_BAR_STEPS))
  writer.save("attention.png", attention.attention_figure(panels, labels), ATTENTION_COLORS, ramp)
  return name


def _best_positive(gt, q: int, features_dir: str, query_features, config):
  """(inliers, name, features, verification) of query q's positive with the most inliers."""
  best = None
  for kind in ("hard", "easy"):
    for i in gt.gnd[q][kind]:
      index_name = gt.imlist[int(i)]
      index_features = feature_io.read_from_file(
        os.path.join(features_dir, index_name + rerank.LOCAL_SUFFIX)
      )
      verified = match_images.verify_pair(query_features, index_features, config)
      if best is None or verified.num_inliers > best[0]:
        best = (verified.num_inliers, index_name, index_features, verified)
    if best is not None and best[0] >= 10:
      break
  return best


def write_delg_matches(writer: _Writer, delg_workdir: str, query_name: str) -> None:
  """The DELG demo's match image of `query_name` (or its first query) and its best positive."""
  gnd_path, images_dir, features = demo_inputs(delg_workdir, rerank.LOCAL_SUFFIX, "delg")
  gt = ground_truth.load_ground_truth(gnd_path)
  q = gt.qimlist.index(query_name) if query_name in gt.qimlist else 0
  query_name = gt.qimlist[q]
  query_features = feature_io.read_from_file(
    os.path.join(features, query_name + rerank.LOCAL_SUFFIX)
  )
  best = _best_positive(gt, q, features, query_features, demo.DEMO_GEOMETRIC_VERIFICATION)
  if best is None:
    raise cli.UserError(f"{gnd_path}: query {query_name} has no positives")
  num_inliers, index_name, index_features, verified = best
  writer.save(
    "matches.png",
    match_images.match_image(
      _load(images_dir, query_name),
      _load(images_dir, index_name),
      query_features.locations,
      index_features.locations,
      verified.matches,
      verified.inliers,
      title=f"{query_name} - {index_name}: {num_inliers} inliers / "
      f"{len(verified.matches)} tentative matches (DELG)",
      max_outliers=25,
      min_side=match_images.READABLE_SIDE,
      wrap_title=True,
    ),
  )


def write_readme_examples(
  output_dir: str, dolg_workdir: str = "runs/demo", delg_workdir: str = "runs/demo_delg"
) -> list[str]:
  """The README's example pictures (README_EXAMPLES) from the two demos' outputs.

  Returns:
    The written paths.

  Raises:
    cli.UserError: a demo output is missing.
  """
  dolg_workdir, delg_workdir = cli.resolve_path(dolg_workdir), cli.resolve_path(delg_workdir)
  demo_inputs(dolg_workdir, ".dolg_global")
  demo_inputs(delg_workdir, rerank.LOCAL_SUFFIX, "delg")
  writer = _Writer(cli.resolve_path(output_dir))
  name = write_dolg_examples(writer, dolg_workdir, delg_workdir)
  write_delg_matches(writer, delg_workdir, name)
  for path in writer.written:
    print(f"{path}: {os.path.getsize(path) // 1024} KB")
  return writer.written


def main(argv):
  del argv  # unused
  write_readme_examples(FLAGS.output_dir, FLAGS.dolg_workdir, FLAGS.delg_workdir)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
