"""The retrieval part of a report: mAP table, AP and precision-recall plots, ranked lists.

`add_retrieval_sections` adds them for one ranking to a report_html.ReportBuilder;
`add_evaluation_sections` / `write_evaluation_report` do it for an evaluation
of evaluation.evaluate (the `dolg-retrieve --report_dir` and
`dolg-visualize` reports), whose summary table has one block of rows per
ranking stage: the global ranking (or ASMK alone) before re-ranking, after
SuperGlobal, after ASMK re-ranking and after geometric verification
(`evaluation_stages`); the plots and ranked lists show the last stage. Images of a ground truth are
`<images_dir>/<name><image_extension>` (as extraction's --gnd_path reads them).
"""

import functools
import os
from collections.abc import Mapping, Sequence

import numpy as np

from dolg_tf.data import ground_truth
from dolg_tf.io import descriptor_reading, image_loading
from dolg_tf.retrieval import metrics
from dolg_tf.utils import untrusted
from dolg_tf.visualization import drawing, plots, ranked_lists, report_html

Results = Mapping[str, metrics.MapResult]
Ranks = np.ndarray | Mapping[str, np.ndarray]
# Names of the ranking stages in the summary table (evaluation_stages).
BEFORE_RERANKING = "global search, before re-ranking"
NO_RERANKING = "global search (no re-ranking)"
AFTER_SUPERGLOBAL = "after SuperGlobal re-ranking"
ASMK_ALONE = "ASMK alone (aggregated local features, no global search)"
AFTER_ASMK = "after ASMK re-ranking"
AFTER_VERIFICATION = "after geometric verification"
SHOWN_RANKING = "ranking shown"


def gnd_image_path(images_dir: str, name: str, image_extension: str = ".jpg") -> str:
  """The image file of a ground-truth name: `<images_dir>/<name><image_extension>`.

  Raises:
    ValueError: naming `name`, if the path leaves `images_dir` (an absolute
      name or `..`): ground-truth names are data, never paths elsewhere.
  """
  path = os.path.join(images_dir, name + image_extension)
  if not untrusted.is_inside(path, images_dir):
    raise ValueError(
      f"ground-truth image name {name!r}: resolves outside the images folder {images_dir}"
    )
  return path


def shown_queries(num_queries: int, max_queries: int) -> list[int]:
  """The queries a report draws ranked lists for: all, or `max_queries` evenly spread."""
  if max_queries <= 0 or num_queries <= max_queries:
    return list(range(num_queries))
  return sorted(set(np.linspace(0, num_queries - 1, max_queries).round().astype(int).tolist()))


def check_images(
  images_dir: str, names: Sequence[str], image_extension: str = ".jpg", what: str = "images"
) -> None:
  """Refuses, with one line counting them, names whose image file is missing.

  Raises:
    FileNotFoundError: '<n> of <total> images (*.jpg) missing in <dir>: a, b, ...'.
  """
  if not os.path.isdir(images_dir):
    raise FileNotFoundError(f"{images_dir}: images folder not found")
  missing = [n for n in names if not os.path.isfile(gnd_image_path(images_dir, n, image_extension))]
  if missing:
    raise FileNotFoundError(
      descriptor_reading.missing_message(
        missing, len(names), f"{what} (*{image_extension})", images_dir
      )
    )


def evaluation_stages(evaluation) -> dict[str, Results]:
  """{stage name: results} of an evaluation (evaluation.Evaluation), first to last.

  The first ranking (the global search, or ASMK when it ranked alone), then
  after SuperGlobal, after ASMK re-ranking and after geometric verification
  when they were on; the last is what the plots and ranked lists show
  (evaluation.reranked or evaluation.ranks).
  """
  asmk = evaluation.asmk_results
  asmk_alone = asmk is not None and asmk is evaluation.global_results
  reranked = (
    evaluation.superglobal_results is not None
    or evaluation.reranked is not None
    or (asmk is not None and not asmk_alone)
  )
  if asmk_alone:
    stages = {ASMK_ALONE: asmk}
  else:
    stages = {(BEFORE_RERANKING if reranked else NO_RERANKING): evaluation.global_results}
  if evaluation.superglobal_results is not None:
    stages[AFTER_SUPERGLOBAL] = evaluation.superglobal_results
  if asmk is not None and not asmk_alone:
    stages[AFTER_ASMK] = asmk
  if evaluation.reranked is not None:
    stages[AFTER_VERIFICATION] = evaluation.results
  return stages


def _percent(value: float) -> str:
  return "skipped" if np.isnan(value) else f"{100 * value:.1f}"


def _protocol_ranks(ranks: Ranks) -> dict[str, np.ndarray]:
  if isinstance(ranks, Mapping):
    return {p: np.asarray(ranks[p]) for p in ground_truth.PROTOCOLS}
  return {p: np.asarray(ranks) for p in ground_truth.PROTOCOLS}


def _summary_section(builder, gt, stages: Mapping[str, Results], prefix: str) -> None:
  """The mAP / mP@k table, one block of rows per ranking stage, named in its first column."""
  builder.section(f"{prefix}Summary")
  rows = []
  for stage, results in stages.items():
    for protocol in ground_truth.PROTOCOLS:
      result = results[protocol]
      rows.append(
        [stage, protocol.capitalize(), f"{100 * result.mean_ap:.2f}"]
        + [f"{100 * v:.2f}" for v in result.mean_precision_at_k]
        + [result.num_skipped]
      )
  kappas = next(iter(stages.values()))[ground_truth.PROTOCOLS[0]].kappas
  builder.add_table(
    ["ranking", "protocol", "mAP %"] + [f"mP@{k} %" for k in kappas] + ["queries skipped"], rows
  )
  shown = list(stages)[-1]
  builder.add_text(
    f"{gt.num_queries} queries, {gt.num_db} database images ({gt.dataset}). "
    f"The plots and ranked lists below show the last ranking of the table ({shown})."
  )


def _plot_sections(builder, gt, by_protocol, results: Results, names: tuple[str, str, str]):
  """The AP and precision-recall plots; `names`: (title prefix, file stem, ranking shown)."""
  prefix, stem, ranking = names
  builder.section(f"{prefix}Average precision per query")
  builder.add_image(
    stem + "ap_per_query",
    plots.ap_plot_png(results, list(gt.qimlist)),
    f"AP per query and protocol; ranking: {ranking}",
  )
  builder.section(f"{prefix}Precision-recall")
  builder.add_image(
    stem + "precision_recall",
    plots.pr_plot_png(by_protocol, gt, results),
    f"per query (grey) and mean interpolated (colour); ranking: {ranking}",
  )


def _ranked_lists(builder, gt, top, shown, images_dir, results, options, stem) -> None:
  """One ranked-list PNG per shown query (images larger than 4 thumbnails shrunk once)."""
  thumb_size, image_extension = options["thumb_size"], options["image_extension"]

  @functools.lru_cache(maxsize=512)
  def load(name: str) -> np.ndarray:
    image = image_loading.load_image(gnd_image_path(images_dir, name, image_extension))
    return drawing.fit(image, 4 * thumb_size)[0] if max(image.shape[:2]) > 4 * thumb_size else image

  for q in shown:
    name = gt.qimlist[q]
    query = image_loading.load_image(gnd_image_path(images_dir, name, image_extension))
    ranking = [int(i) for i in top[q]]
    labels = ranked_lists.gt_labels(gt.gnd[q], ranking)
    images = [load(gt.imlist[i]) if i < gt.num_db else None for i in ranking]
    aps = " ".join(f"{p[0].upper()} {_percent(results[p].aps[q])}" for p in ground_truth.PROTOCOLS)
    picture = ranked_lists.ranked_list_image(
      query, images, labels, gt.gnd[q].get("bbx"), f"{name}  AP {aps}", thumb_size
    )
    builder.add_image(
      f"{stem}ranked_{name}", picture, f"{name}: AP {aps}", ranked_lists.RANKED_LIST_COLORS
    )


def add_retrieval_sections(
  builder: report_html.ReportBuilder,
  gt: ground_truth.RevisitedGroundTruth,
  ranks: Ranks,
  images_dir: str,
  results: Results | None = None,
  image_extension: str = ".jpg",
  top_k: int = 10,
  max_queries: int = 50,
  thumb_size: int = 96,
  ranked_list_protocol: str = "medium",
  label: str = "",
  stages: Mapping[str, Results] | None = None,
) -> None:
  """Adds the mAP table, the AP and precision-recall plots and the ranked lists of a ranking.

  Args:
    builder: the report.
    gt: the ground truth the ranking is scored against.
    ranks: int [Q, K] database indices per query, best first (indices past
      `gt.imlist` are distractors: grey tiles); or {protocol: [Q, K]} when
      the ranking differs per protocol (geometric verification).
    images_dir: folder of `<name><image_extension>` images.
    results: {protocol: MapResult}; default computed from `ranks`.
    image_extension: of the image files.
    top_k: results drawn per query.
    max_queries: ranked lists drawn (evenly spread over the queries; 0 = all).
    thumb_size: thumbnail side in pixels.
    ranked_list_protocol: whose ranking the lists show when ranks differ per protocol.
    label: prefix of section titles and file names (several rankings in one report).
    stages: {stage name: results} rows of the summary table, first to last
      (evaluation_stages); default {SHOWN_RANKING: results}.

  Raises:
    FileNotFoundError: images missing (all counted, before any is drawn).
    images.ImageError: an image that does not decode (named).
  """
  by_protocol = _protocol_ranks(ranks)
  if results is None:
    results = {
      p: metrics.compute_map(r, ground_truth.protocol_ground_truth(gt, p))
      for p, r in by_protocol.items()
    }
  shown = shown_queries(gt.num_queries, max_queries)
  top = by_protocol[ranked_list_protocol][:, :top_k]
  needed_db = sorted({int(i) for q in shown for i in top[q] if int(i) < gt.num_db})
  check_images(images_dir, [gt.qimlist[q] for q in shown], image_extension, "query images")
  check_images(images_dir, [gt.imlist[i] for i in needed_db], image_extension, "index images")
  prefix = f"{label}: " if label else ""
  stem = report_html.safe_name(label) + "_" if label else ""
  stages = stages or {SHOWN_RANKING: results}
  _summary_section(builder, gt, stages, prefix)
  _plot_sections(builder, gt, by_protocol, results, (prefix, stem, list(stages)[-1]))
  builder.section(
    f"{prefix}Ranked lists",
    f"Top {top_k} per query ({len(shown)} of {gt.num_queries} queries), frames coloured by the "
    f"ground truth; the query's box in yellow."
    + (f" Rankings of the {ranked_list_protocol} protocol." if isinstance(ranks, Mapping) else ""),
  )
  builder.add_legend(ranked_lists.LABEL_COLORS)
  options = {"thumb_size": thumb_size, "image_extension": image_extension}
  _ranked_lists(builder, gt, top, shown, images_dir, results, options, stem)


def write_retrieval_report(
  report_dir: str,
  gt: ground_truth.RevisitedGroundTruth,
  ranks: Ranks,
  images_dir: str,
  results: Results | None = None,
  title: str = "",
  summary: str = "",
  **options,
) -> str:
  """A report folder with the sections of `add_retrieval_sections` (and `summary` text).

  Args:
    report_dir: the folder (replaced whole, atomically).
    gt / ranks / images_dir / results: as add_retrieval_sections.
    title: page title; default "<dataset> retrieval".
    summary: text shown first (e.g. perform_retrieval's printed lines).
    **options: add_retrieval_sections' image_extension, top_k, max_queries,
      thumb_size, ranked_list_protocol, stages.

  Returns:
    The path of index.html.
  """

  def fill(builder):
    if summary:
      builder.section("Evaluation")
      builder.add_text(summary, preformatted=True)
    add_retrieval_sections(builder, gt, ranks, images_dir, results, **options)

  return report_html.write_report(report_dir, title or f"{gt.dataset} retrieval", fill)


def add_evaluation_sections(
  builder: report_html.ReportBuilder,
  gt: ground_truth.RevisitedGroundTruth,
  evaluation,
  images_dir: str,
  **options,
) -> None:
  """The printed summary, then add_retrieval_sections of an evaluation's final ranking.

  Args:
    builder: the report.
    gt: the ground truth the evaluation scored.
    evaluation: a evaluation.Evaluation (its ranks, reranked, results
      and the stage results of evaluation_stages).
    images_dir: folder of `<name><image_extension>` images.
    **options: add_retrieval_sections' image_extension, top_k, max_queries,
      thumb_size, ranked_list_protocol.
  """
  builder.section("Evaluation")
  builder.add_text(evaluation.summary, preformatted=True)
  add_retrieval_sections(
    builder,
    gt,
    evaluation.reranked or evaluation.ranks,
    images_dir,
    evaluation.results,
    stages=evaluation_stages(evaluation),
    **options,
  )


def write_evaluation_report(
  report_dir: str,
  gt: ground_truth.RevisitedGroundTruth,
  evaluation,
  images_dir: str,
  title: str = "",
  **options,
) -> str:
  """A report folder of `add_evaluation_sections` (replaced whole, atomically); its index.html."""

  def fill(builder):
    add_evaluation_sections(builder, gt, evaluation, images_dir, **options)

  return report_html.write_report(report_dir, title or f"{gt.dataset} retrieval", fill)
