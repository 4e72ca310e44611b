"""Tests for dolg_tf.visualization (pictures, plots, the HTML report): pixels, files, links."""

import html.parser
import os
import pickle

import numpy as np
import tensorflow as tf
from PIL import Image

from dolg_tf.data import ground_truth
from dolg_tf.io import datum_io, feature_io
from dolg_tf.retrieval import evaluation as evaluation_lib
from dolg_tf.retrieval import geometric_verification, metrics, retrieval_config
from dolg_tf.utils import images
from dolg_tf.visualization import drawing, match_images, plots, ranked_lists, retrieval_report
from tests import testutil

GREY = 100


def _grey(height, width, value=GREY):
  return np.full([height, width, 3], value, np.uint8)


def _colors_near(image, x, y, radius=1):
  """The set of RGB colours within `radius` pixels of (x, y)."""
  patch = image[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1]
  return {tuple(int(c) for c in pixel) for pixel in patch.reshape(-1, 3)}


class _Links(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.links = []

  def handle_starttag(self, tag, attrs):
    self.links.extend(value for name, value in attrs if name in ("src", "href"))


def _write_benchmark(root, num_db=6, size=(40, 56)):
  """A two-query gnd in the Revisited Oxford layout and its JPEG images (distinct colours)."""
  images_dir = os.path.join(root, "jpg")
  os.makedirs(images_dir)
  imlist = [f"db{i}" for i in range(num_db)]
  qimlist = ["q0", "q1"]
  for k, name in enumerate(imlist + qimlist):
    colour = (40 * k % 256, 255 - 30 * k % 256, 90)
    Image.new("RGB", size[::-1], colour).save(os.path.join(images_dir, name + ".jpg"))
  gnd = {
    "imlist": imlist,
    "qimlist": qimlist,
    "gnd": [
      {"easy": [0], "hard": [1], "junk": [2], "bbx": [5, 5, 30, 20]},
      {"easy": [3, 4], "hard": [], "junk": [], "bbx": [0, 0, 56, 40]},
    ],
  }
  path = os.path.join(root, "gnd_tiny.pkl")
  with open(path, "wb") as f:
    pickle.dump(gnd, f)
  return path, images_dir


class DrawingTest(tf.test.TestCase):
  def test_heatmap_overlay_keeps_size_and_cold_pixels_and_colours_hot_ones(self):
    image = _grey(30, 50)
    heat = np.zeros([3, 5], np.float32)
    heat[1, 3] = 4.0  # hot cell at the image's (row 15, column 35) after resizing
    overlay = drawing.heatmap_overlay(image, heat, alpha=0.6)
    self.assertEqual(overlay.shape, image.shape)
    self.assertEqual(overlay.dtype, np.uint8)
    # Far from the hot cell the weight is 0: the image's pixels, exactly.
    self.assertAllEqual(overlay[:5, :10], image[:5, :10])
    # The hottest pixel: 40 % grey + 60 % of jet(1) (dark red).
    self.assertAllClose(overlay[15, 35], [0.4 * GREY + 0.6 * 128, 0.4 * GREY, 0.4 * GREY], atol=2)
    with self.assertRaisesRegex(ValueError, "NaN or inf"):
      drawing.heatmap_overlay(image, np.full([2, 2], np.nan))

  def test_jet_runs_from_blue_to_red(self):
    low, mid, high = drawing.jet(np.array([0.0, 0.5, 1.0]))
    self.assertEqual(int(np.argmax(low)), 2)
    self.assertEqual(int(np.argmax(high)), 0)
    self.assertGreater(int(mid[1]), 200)

  def test_png_round_trip_and_palette(self):
    image = np.zeros([8, 8, 3], np.uint8)
    image[2:5, 3:6] = (255, 0, 0)
    for colors in (0, 16):
      decoded = images.decode_image(drawing.encode_png(image, colors))
      self.assertAllEqual(decoded, image)

  def test_palette_keeps_the_colours_it_is_given(self):
    ramp = drawing.jet(np.linspace(0.0, 1.0, 40))
    image = np.zeros([40, 60, 3], np.uint8)
    image[:, :50] = np.random.default_rng(0).integers(0, 256, size=[40, 50, 3])
    image[:, 50:] = ramp[:, None, :]
    decoded = images.decode_image(drawing.encode_png(image, 64, keep=ramp))
    self.assertAllEqual(decoded[:, 50:], image[:, 50:])  # the ramp, exactly
    self.assertLessEqual(len(np.unique(decoded.reshape(-1, 3), axis=0)), 64)

  def test_wrap_text_keeps_every_line_inside_the_width(self):
    text = "q_00012 - db_00345: 17 inliers / 120 tentative matches (25 of 103 rejected drawn)"
    lines = drawing.wrap_text(text, 150)
    self.assertGreater(len(lines), 1)
    self.assertEqual(" ".join(lines), text)
    for line in lines:
      self.assertLessEqual(drawing.text_size(line)[0], 150, line)

  def test_colour_bar_runs_from_high_at_the_top_to_low_at_the_bottom(self):
    bar = drawing.colour_bar(50, width=10)
    high, low = drawing.jet(np.array([1.0, 0.0]))
    self.assertEqual(bar.shape[0], 50)
    self.assertAllEqual(bar[0, 5], high)
    self.assertAllEqual(bar[49, 5], low)
    self.assertGreater(np.count_nonzero(bar[:, 14:].max(axis=2) < 80), 10)  # its labels


class MatchImageTest(tf.test.TestCase):
  def test_inlier_and_outlier_lines_have_their_colours(self):
    height, width = 40, 60
    # Keypoints (y, x): a's rows 10 and 30 matched to b's rows 10 and 30.
    locations_a = np.array([[10, 5], [30, 5], [20, 40]], np.float32)
    locations_b = np.array([[10, 50], [30, 50]], np.float32)
    matches = np.array([[0, 0], [1, 1]])
    picture = match_images.match_image(
      _grey(height, width), _grey(height, width), locations_a, locations_b, matches, [True, False]
    )
    top = match_images.MATCH_HEADER_HEIGHT
    offset_b = width + match_images.MATCH_GAP
    self.assertEqual(picture.shape, (top + height, offset_b + width, 3))
    # Along each horizontal line, from a's keypoint to b's (away from the end dots).
    for x in range(12, offset_b + 45):
      self.assertEqual(tuple(picture[top + 10, x]), match_images.INLIER_COLOR, x)
      self.assertEqual(tuple(picture[top + 30, x]), match_images.OUTLIER_COLOR, x)
    # The unmatched keypoint is a dot; elsewhere the images are untouched.
    self.assertEqual(tuple(picture[top + 20, 40]), match_images.KEYPOINT_COLOR)
    self.assertEqual(tuple(picture[top + 20, 20]), (GREY,) * 3)
    self.assertEqual(tuple(picture[top + 2, offset_b + 2]), (GREY,) * 3)
    # The header holds the inlier count as dark text on white.
    header = picture[:top]
    self.assertGreater(np.count_nonzero(header.max(axis=2) < 80), 20)

  def test_diagonal_inlier_line(self):
    picture = match_images.match_image(
      _grey(40, 40), _grey(40, 40), [[5, 5]], [[35, 35]], [[0, 0]], [True]
    )
    top, offset_b = match_images.MATCH_HEADER_HEIGHT, 40 + match_images.MATCH_GAP
    start, end = np.array([5.0, 5 + top]), np.array([35.0 + offset_b, 35 + top])
    for t in np.linspace(0.2, 0.8, 13):
      x, y = np.round(start + t * (end - start)).astype(int)
      self.assertIn(match_images.INLIER_COLOR, _colors_near(picture, x, y), (x, y))

  def test_small_images_are_enlarged_and_a_long_title_is_wrapped_not_cut(self):
    title = "q_00012 - db_00345: 1 inliers / 1 tentative matches (a title longer than the images)"
    picture = match_images.match_image(
      _grey(40, 40),
      _grey(40, 40),
      [[5, 5]],
      [[35, 35]],
      [[0, 0]],
      [True],
      title=title,
      min_side=match_images.READABLE_SIDE,
      wrap_title=True,
    )
    side, gap = match_images.READABLE_SIDE, match_images.MATCH_GAP
    lines = drawing.wrap_text(title, 2 * side + gap - 6)
    top = len(lines) * match_images.MATCH_HEADER_HEIGHT
    self.assertEqual(picture.shape, (top + side, 2 * side + gap, 3))
    for line in lines:
      self.assertLess(drawing.text_size(line)[0], picture.shape[1] - 3, line)
    # The keypoints follow the 8x enlargement: the inlier line starts at a's (5, 5) * 8.
    self.assertIn(match_images.INLIER_COLOR, _colors_near(picture, 40, top + 40, radius=2))
    narrow = match_images.match_image(
      _grey(40, 40),
      _grey(40, 40),
      [[5, 5]],
      [[35, 35]],
      [[0, 0]],
      [True],
      title=title,
      wrap_title=True,
    )
    self.assertGreater(narrow.shape[0] - 40, 2 * match_images.MATCH_HEADER_HEIGHT)

  def test_verify_pair_finds_the_consistent_matches(self):
    rng = np.random.default_rng(0)
    descriptors = rng.normal(size=[14, 8]).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    locations_a = rng.uniform(0, 100, size=[14, 2]).astype(np.float32)
    locations_b = locations_a + [7.0, -4.0]  # a translation ...
    locations_b[10:] = rng.uniform(0, 100, size=[4, 2])  # ... except 4 outliers
    ones = np.ones(14, np.float32)
    features_a = feature_io.LocalFeatures(locations_a, ones, descriptors, ones, 0 * ones)
    features_b = feature_io.LocalFeatures(locations_b, ones, descriptors, ones, 0 * ones)
    verified = match_images.verify_pair(
      features_a,
      features_b,
      geometric_verification.GeometricVerificationConfig(residual_threshold=2.0),
    )
    self.assertAllEqual(verified.matches, np.stack([np.arange(14)] * 2, axis=1))
    self.assertAllEqual(verified.inliers, np.arange(14) < 10)
    self.assertEqual(
      verified.num_inliers,
      geometric_verification.count_inliers(features_a, features_b, residual_threshold=2.0),
    )


class RankedListTest(tf.test.TestCase):
  def test_frames_have_the_colour_of_their_ground_truth_label(self):
    entry = {"easy": [0], "hard": [1], "junk": [2]}
    ranking = [2, 0, 3, 1, 9]
    labels = ranked_lists.gt_labels(entry, ranking)
    self.assertEqual(labels, ["junk", "easy", "negative", "hard", "negative"])
    thumb, border = 32, 3
    results = [_grey(20, 30, 60 + 20 * i) for i in range(len(ranking) - 1)] + [None]
    picture = ranked_lists.ranked_list_image(
      _grey(50, 100),
      results,
      labels,
      query_box=(10, 10, 60, 40),
      caption="q",
      thumb_size=thumb,
      border=border,
    )
    for rank, label in enumerate(labels, start=1):
      x1, y1, x2, y2 = ranked_lists.ranked_tile_box(rank, thumb, border)
      colour = ranked_lists.LABEL_COLORS[label]
      for x, y in ((x1, y1), (x2 - 1, y2 - 1), ((x1 + x2) // 2, y1 + 1), (x1 + 1, (y1 + y2) // 2)):
        self.assertEqual(tuple(picture[y, x]), colour, (rank, label, x, y))
      # Inside the frame: the thumbnail, not the frame colour.
      self.assertNotEqual(tuple(picture[(y1 + y2) // 2, (x1 + x2) // 2]), colour)
    x1, y1, x2, y2 = ranked_lists.ranked_tile_box(0, thumb, border)
    self.assertEqual(tuple(picture[y1, x1]), ranked_lists.QUERY_FRAME_COLOR)
    # The query box (10..60, 10..40 of a 100x50 image) on the 32 px thumbnail: scale 0.32,
    # image offset 8 px down; its top edge at y = 8 + 3.2, from x = 3.2 to 19.2.
    scale, oy = thumb / 100, (thumb - 16) // 2
    top_y = y1 + border + round(oy + 10 * scale)
    for x in range(round(10 * scale) + 2, round(60 * scale) - 2):
      self.assertIn(ranked_lists.BOX_COLOR, _colors_near(picture, x1 + border + x, top_y), x)
    self.assertEqual(tuple(picture[y1 + border + 22, x1 + border + 26]), (GREY,) * 3)

  def test_unknown_label_is_refused(self):
    with self.assertRaisesRegex(ValueError, "unknown label"):
      ranked_lists.ranked_list_image(_grey(8, 8), [_grey(8, 8)], ["positive"])


def _map_result(aps):
  aps = np.asarray(aps, np.float64)
  kept = aps[~np.isnan(aps)]
  return metrics.MapResult(
    float(kept.mean()),
    aps,
    np.array([0.5]),
    np.full([len(aps), 1], 0.5),
    (1,),
    int(np.isnan(aps).sum()),
  )


class PlotTest(tf.test.TestCase):
  def test_ap_plot_tick_labels_are_legible_and_do_not_overlap(self):
    names = [f"query_{i:05d}" for i in range(150)]
    aps = np.linspace(0.0, 1.0, 150)
    aps[3] = np.nan
    results = {p: _map_result(aps) for p in ground_truth.PROTOCOLS}
    figure = plots.ap_figure(results, names)
    axis = figure.axes[-1]
    labels = [t for t in axis.get_xticklabels() if t.get_text()]
    self.assertNotEmpty(labels)
    for label in labels:
      self.assertGreaterEqual(label.get_fontsize() * plots.DPI / 72, 12)  # pixels, not ~5
    # Side by side, rotated labels need about their font height each.
    width_px = figure.get_figwidth() * plots.DPI
    self.assertLessEqual(len(labels) * plots.MIN_LABEL_POINTS * plots.DPI / 72, width_px)
    for ax in figure.axes:
      legend = ax.get_legend()
      self.assertIsNotNone(legend)
      self.assertIn("mAP", [t.get_text() for t in legend.get_texts()])
    png = plots.figure_png(figure)
    self.assertEqual(images.decode_image(png).shape[1], round(width_px))

  def test_pr_plot_panels_have_legends(self):
    root = self.create_tempdir().full_path
    gnd_path, _ = _write_benchmark(root)
    gt = ground_truth.load_ground_truth(gnd_path)
    ranks = np.array([[0, 2, 5, 1, 3, 4], [3, 0, 4, 1, 2, 5]])
    figure = plots.pr_figure({p: ranks for p in ground_truth.PROTOCOLS}, gt)
    self.assertLen(figure.axes, 3)
    for ax in figure.axes:
      texts = [t.get_text() for t in ax.get_legend().get_texts()]
      self.assertEqual(texts, ["each query", "mean (interpolated)"])


class HtmlReportTest(tf.test.TestCase):
  def test_report_links_only_files_it_wrote(self):
    root = self.create_tempdir().full_path
    gnd_path, images_dir = _write_benchmark(root)
    gt = ground_truth.load_ground_truth(gnd_path)
    ranks = np.array([[0, 2, 5, 1, 3, 4], [3, 0, 4, 1, 2, 5]])
    report_dir = os.path.join(root, "report")
    index = retrieval_report.write_retrieval_report(
      report_dir, gt, ranks, images_dir, summary="a <summary> line", top_k=4, thumb_size=24
    )
    self.assertEqual(index, os.path.join(report_dir, "index.html"))
    with open(index, encoding="utf-8") as f:
      page = f.read()
    parser = _Links()
    parser.feed(page)
    targets = {link for link in parser.links if not link.startswith("#")}
    self.assertNotIn("://", page)
    self.assertIn("a &lt;summary&gt; line", page)
    written = set(os.listdir(report_dir)) - {"index.html"}
    self.assertEqual(targets, written)  # every PNG linked, every link a file of the folder
    for name in targets:
      self.assertEqual(os.path.basename(name), name)
      self.assertEqual(images.decode_image(os.path.join(report_dir, name)).shape[2], 3)
    self.assertIn("ranked_q0.png", written)
    self.assertIn("ranked_q1.png", written)
    # q0: easy db0 first, junk db2 (ignored), then a negative, then hard db1 (AP 1 on Easy).
    self.assertIn("q0: AP E 100.0", page)

  def test_missing_images_are_counted_and_nothing_is_written(self):
    root = self.create_tempdir().full_path
    gnd_path, images_dir = _write_benchmark(root)
    os.remove(os.path.join(images_dir, "db5.jpg"))
    os.remove(os.path.join(images_dir, "db4.jpg"))
    gt = ground_truth.load_ground_truth(gnd_path)
    report_dir = os.path.join(root, "report")
    with self.assertRaisesRegex(
      FileNotFoundError, f"^2 of 6 index images \\(\\*.jpg\\) missing in {images_dir}: db4, db5$"
    ):
      retrieval_report.write_retrieval_report(
        report_dir, gt, np.array([[0, 5, 4], [1, 2, 3]]), images_dir
      )
    self.assertEqual(sorted(os.listdir(root)), ["gnd_tiny.pkl", "jpg"])  # no report, no temporary


class PerformRetrievalReportTest(tf.test.TestCase):
  def _features(self, root, gnd_path):
    gt = ground_truth.load_ground_truth(gnd_path)
    features = os.path.join(root, "features")
    os.makedirs(features)
    rng = np.random.default_rng(1)
    for name in gt.imlist + gt.qimlist:
      datum_io.write_to_file(os.path.join(features, name + ".dolg_global"), rng.normal(size=4))
    return features

  def test_evaluation_exposes_its_rankings_for_the_report(self):
    root = self.create_tempdir().full_path
    gnd_path, images_dir = _write_benchmark(root)
    features = self._features(root, gnd_path)
    gt = ground_truth.load_ground_truth(gnd_path)
    grid = np.stack(np.meshgrid(np.arange(4, 36, 6), np.arange(4, 36, 6)), -1).reshape(-1, 2)
    local = np.eye(len(grid), 40, dtype=np.float32)
    ones = np.ones(len(grid), np.float32)
    for k, name in enumerate(gt.imlist + gt.qimlist):
      # db1 and q0 share their keypoint layout (shifted by 2 px); the others are scrambled.
      points = grid + 2 if name in ("db1", "q0") else grid[::-1] * [1, 0.3] + k
      feature_io.write_to_file(
        os.path.join(features, name + ".delg_local"), points, ones, local, ones
      )
    plain = evaluation_lib.evaluate(gnd_path, features, features)
    self.assertEqual(plain.ranks.shape, (2, 6))
    self.assertIsNone(plain.reranked)
    verified = evaluation_lib.evaluate(
      gnd_path,
      features,
      features,
      config=retrieval_config.RetrievalConfig(
        use_geometric_verification=True,
        geometric_verification=geometric_verification.GeometricVerificationConfig(
          residual_threshold=1.0, max_scale_change=2.0, max_anisotropy=2.0
        ),
      ),
    )
    self.assertAllEqual(verified.ranks, plain.ranks)
    self.assertNotEqual(plain.ranks[0, 0], 1)  # the global ranking puts db1 elsewhere
    self.assertEqual(set(verified.reranked), set(ground_truth.PROTOCOLS))
    # q0's geometric match db1 (hard: not re-ranked on Easy, where it is junk) comes first.
    self.assertEqual(verified.reranked["hard"][0, 0], 1)
    self.assertEqual(verified.reranked["medium"][0, 0], 1)
    index = retrieval_report.write_retrieval_report(
      os.path.join(root, "report"), gt, verified.reranked, images_dir, verified.results
    )
    with open(index, encoding="utf-8") as f:
      self.assertIn("Rankings of the medium protocol", f.read())
    # The summary table names each ranking: before and after re-ranking.
    index = retrieval_report.write_evaluation_report(
      os.path.join(root, "verified"), gt, verified, images_dir
    )
    with open(index, encoding="utf-8") as f:
      page = f.read()
    self.assertIn("<tr><th>ranking</th><th>protocol</th><th>mAP %</th>", page)
    self.assertIn(f"<td>{retrieval_report.BEFORE_RERANKING}</td>", page)
    self.assertIn(f"<td>{retrieval_report.AFTER_VERIFICATION}</td>", page)
    self.assertIn(f"last ranking of the table ({retrieval_report.AFTER_VERIFICATION})", page)
    self.assertIn(
      f"AP per query and protocol; ranking: {retrieval_report.AFTER_VERIFICATION}", page
    )
    self.assertEqual(
      list(retrieval_report.evaluation_stages(plain)), [retrieval_report.NO_RERANKING]
    )

  def test_evaluation_stages_name_asmk_alone_and_asmk_reranking(self):
    first, asmk, verified = ({"easy": i} for i in range(3))
    alone = evaluation_lib.Evaluation(asmk, asmk, "", 3, asmk_results=asmk)
    self.assertEqual(retrieval_report.evaluation_stages(alone), {retrieval_report.ASMK_ALONE: asmk})
    reranked = evaluation_lib.Evaluation(asmk, first, "", 3, asmk_results=asmk)
    self.assertEqual(
      retrieval_report.evaluation_stages(reranked),
      {retrieval_report.BEFORE_RERANKING: first, retrieval_report.AFTER_ASMK: asmk},
    )
    reranked.results, reranked.reranked = verified, {"easy": None}
    self.assertEqual(
      list(retrieval_report.evaluation_stages(reranked).items()),
      [
        (retrieval_report.BEFORE_RERANKING, first),
        (retrieval_report.AFTER_ASMK, asmk),
        (retrieval_report.AFTER_VERIFICATION, verified),
      ],
    )

  def test_report_dir_flag_writes_the_report_and_needs_images_dir(self):
    root = self.create_tempdir().full_path
    gnd_path, images_dir = _write_benchmark(root)
    features = self._features(root, gnd_path)
    args = [
      f"--dataset_file_path={gnd_path}",
      f"--query_features_dir={features}",
      f"--index_features_dir={features}",
      f"--report_dir={root}/report",
    ]
    done = testutil.run_module("dolg_tf.retrieval.perform_retrieval", *args)
    self.assertEqual(done.returncode, 2, done.stderr)
    self.assertRegex(
      done.stderr.strip(), r"^perform_retrieval: error: --report_dir needs --images_dir"
    )
    self.assertEqual(len(done.stderr.strip().splitlines()), 1)
    done = testutil.run_module(
      "dolg_tf.retrieval.perform_retrieval", *args, f"--images_dir={images_dir}"
    )
    self.assertEqual(done.returncode, 0, done.stderr)
    self.assertIn(f"report: {root}/report/index.html", done.stdout)
    with open(os.path.join(root, "report", "index.html"), encoding="utf-8") as f:
      self.assertIn("ranked_q1.png", f.read())


if __name__ == "__main__":
  tf.test.main()
