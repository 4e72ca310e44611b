"""Plots of a retrieval evaluation: per-query AP bars and precision-recall curves.

matplotlib's Agg canvas draws them without pyplot state: `ap_figure` /
`pr_figure` build the figures (tests inspect them), `ap_plot_png` /
`pr_plot_png` give PNG bytes at `DPI`. Tick labels are at least
`MIN_LABEL_POINTS` (about 12 px at 100 dpi); with more queries than fit at
that size, every n-th query is named.
"""

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends import backend_agg
from matplotlib.figure import Figure

from dolg_tf.data import ground_truth
from dolg_tf.retrieval import metrics

PROTOCOL_COLORS = {"easy": "#2ca02c", "medium": "#ff7f0e", "hard": "#d62728"}
DPI = 100
# Font sizes in points (1 pt = DPI / 72 px).
MIN_LABEL_POINTS = 9
TITLE_POINTS = 11
LEGEND_POINTS = 9
# Width of one query's bar in the AP plot, in inches (a 9 pt label is 0.125 in tall).
INCHES_PER_QUERY = 0.17
MAX_AP_WIDTH_INCHES = 24.0
RECALL_GRID = np.linspace(0.0, 1.0, 101)


def figure_png(figure: Figure, dpi: int = DPI) -> bytes:
  """PNG bytes of a matplotlib figure (Agg canvas)."""
  backend_agg.FigureCanvasAgg(figure)
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=dpi)
  return buffer.getvalue()


def _label_step(count: int, width_inches: float) -> int:
  """Name every n-th query so that labels of MIN_LABEL_POINTS do not overlap."""
  per_label = 1.2 * MIN_LABEL_POINTS / 72.0
  usable = max(1.0, width_inches - 1.0)
  return max(1, int(np.ceil(count * per_label / usable)))


def ap_figure(results: Mapping[str, metrics.MapResult], query_names: Sequence[str]) -> Figure:
  """Per-query AP bars, one panel per protocol, mAP as a dashed line (with a legend).

  Queries the protocol skips (no positives) are marked 'x' at 0.
  """
  protocols = [p for p in ground_truth.PROTOCOLS if p in results]
  count = len(query_names)
  width = min(MAX_AP_WIDTH_INCHES, max(6.0, INCHES_PER_QUERY * count + 1.5))
  label_height = 0.09 * max((len(str(n)) for n in query_names), default=1)
  figure = Figure(figsize=(width, 2.0 * len(protocols) + 0.6 + label_height))
  axes = figure.subplots(len(protocols), 1, sharex=True, squeeze=False)[:, 0]
  positions = np.arange(count)
  for ax, protocol in zip(axes, protocols):
    result = results[protocol]
    aps = np.asarray(result.aps, np.float64)
    skipped = np.isnan(aps)
    ax.bar(positions, np.where(skipped, 0.0, 100 * aps), color=PROTOCOL_COLORS[protocol])
    ax.axhline(100 * result.mean_ap, color="k", linestyle="--", linewidth=1, label="mAP")
    if skipped.any():
      ax.plot(positions[skipped], np.zeros(skipped.sum()), "x", color="0.4", label="skipped")
    # Above the panel's top right corner, beside the title: no bar is hidden.
    ax.legend(
      loc="lower right",
      bbox_to_anchor=(1.0, 1.0),
      ncol=2,
      frameon=False,
      fontsize=LEGEND_POINTS,
      borderaxespad=0.1,
    )
    ax.set_ylim(0, 105)
    ax.set_ylabel("AP %", fontsize=MIN_LABEL_POINTS + 1)
    ax.tick_params(axis="y", labelsize=MIN_LABEL_POINTS)
    ax.set_title(f"{protocol.capitalize()}: mAP {100 * result.mean_ap:.2f}", fontsize=TITLE_POINTS)
  step = _label_step(count, width)
  shown = positions[::step]
  axes[-1].set_xticks(shown)
  axes[-1].set_xticklabels([query_names[i] for i in shown], rotation=90, fontsize=MIN_LABEL_POINTS)
  axes[-1].set_xlim(-0.6, count - 0.4)
  figure.tight_layout()
  return figure


def ap_plot_png(results: Mapping[str, metrics.MapResult], query_names: Sequence[str]) -> bytes:
  """PNG bytes of `ap_figure`."""
  return figure_png(ap_figure(results, query_names))


def interpolated_precision(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
  """Precision at RECALL_GRID: the best precision at any recall >= r (0 past the last)."""
  out = np.zeros_like(RECALL_GRID)
  best = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
  for i, r in enumerate(RECALL_GRID):
    reached = np.flatnonzero(np.asarray(recall) >= r - 1e-12)
    out[i] = best[reached[0]] if reached.size else 0.0
  return out


def _pr_panel(ax, protocol: str, ranks: np.ndarray, gt, result) -> None:
  """One protocol's curves: each query thin grey, the mean interpolated bold; legend."""
  curves = []
  for q, entry in enumerate(ground_truth.protocol_ground_truth(gt, protocol)):
    if len(entry["ok"]) == 0:
      continue
    recall, precision = metrics.precision_recall(ranks[q], entry["ok"], entry["junk"])
    label = "each query" if not curves else None
    ax.plot(recall, precision, color="0.75", linewidth=0.6, drawstyle="steps-pre", label=label)
    # Without the (0, 1) start point: at recall 0 the best precision of a real hit.
    curves.append(interpolated_precision(recall[1:], precision[1:]))
  if curves:
    ax.plot(
      RECALL_GRID,
      np.mean(curves, axis=0),
      color=PROTOCOL_COLORS[protocol],
      linewidth=2,
      label="mean (interpolated)",
    )
    ax.legend(loc="lower left", fontsize=LEGEND_POINTS)
  title = protocol.capitalize()
  if result is not None:
    title += f": mAP {100 * result.mean_ap:.2f}"
  ax.set_title(f"{title} ({len(curves)} queries)", fontsize=TITLE_POINTS)
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.02)
  ax.set_xlabel("recall", fontsize=MIN_LABEL_POINTS + 1)
  ax.tick_params(labelsize=MIN_LABEL_POINTS)
  ax.grid(alpha=0.3)


def pr_figure(
  ranks: Mapping[str, np.ndarray],
  gt: ground_truth.RevisitedGroundTruth,
  results: Mapping[str, metrics.MapResult] | None = None,
) -> Figure:
  """Precision-recall curves, one panel per protocol, each with a legend.

  Each query's curve (junk removed, metrics.precision_recall) is a thin grey
  line; the bold line is the mean interpolated precision over the queries
  with positives.

  Args:
    ranks: {protocol: int [Q, K]} rankings.
    gt: the ground truth.
    results: {protocol: MapResult} for the panel titles (mAP); optional.
  """
  protocols = [p for p in ground_truth.PROTOCOLS if p in ranks]
  figure = Figure(figsize=(3.6 * len(protocols), 3.6))
  axes = figure.subplots(1, len(protocols), sharey=True, squeeze=False)[0]
  for ax, protocol in zip(axes, protocols):
    result = results.get(protocol) if results else None
    _pr_panel(ax, protocol, ranks[protocol], gt, result)
  axes[0].set_ylabel("precision", fontsize=MIN_LABEL_POINTS + 1)
  figure.tight_layout()
  return figure


def pr_plot_png(
  ranks: Mapping[str, np.ndarray],
  gt: ground_truth.RevisitedGroundTruth,
  results: Mapping[str, metrics.MapResult] | None = None,
) -> bytes:
  """PNG bytes of `pr_figure`."""
  return figure_png(pr_figure(ranks, gt, results))
