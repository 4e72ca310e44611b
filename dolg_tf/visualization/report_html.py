"""The HTML report: one folder with an `index.html` and the PNGs it shows.

`ReportBuilder` writes PNGs into one folder and an `index.html` beside them
that links them by relative name, with inline CSS and no external URL, so
the folder can be copied or opened anywhere. `write_report` builds the folder
atomically (files.atomic_write_dir: a complete report or the old one).
"""

import html
import os
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from dolg_tf.utils import files as file_utils
from dolg_tf.visualization import drawing

INDEX_HTML = "index.html"

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
nav a { margin-right: 1em; }
figure { display: inline-block; margin: 0.4em 0.8em 0.8em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; image-rendering: auto; }
figcaption { font-size: 0.85em; color: #555; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin: 0 0.3em 0 0.9em;
  vertical-align: middle; border: 1px solid #444; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; }
"""


def safe_name(stem: str) -> str:
  """`stem` with characters other than letters, digits, `.`, `_` and `-` replaced by `_`."""
  return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"


def _hex(color) -> str:
  return "#" + "".join(f"{int(c):02x}" for c in color)


class ReportBuilder:
  """Collects sections of an HTML page while writing their PNGs into `folder`.

  builder = ReportBuilder(folder, "title")
  builder.section("Attention")
  builder.add_image("attention_q0", overlay, "q0")
  builder.write_html()          # folder/index.html
  """

  def __init__(self, folder: str, title: str):
    self.folder = folder
    self.title = title
    self._sections: list[tuple[str, str, list[str]]] = []
    self._names: set[str] = set()

  def section(self, title: str, text: str = "") -> None:
    """Starts a section; what is added next goes into it."""
    anchor = safe_name(title.lower())
    while any(anchor == a for a, _, _ in self._sections):
      anchor += "_"
    items = [f"<p>{html.escape(text)}</p>"] if text else []
    self._sections.append((anchor, title, items))

  def _items(self) -> list[str]:
    if not self._sections:
      self.section(self.title)
    return self._sections[-1][2]

  def add_image(
    self, stem: str, image: np.ndarray | bytes, caption: str = "", colors=0, keep=None
  ) -> str:
    """Writes `image` (RGB array or PNG bytes) as `<stem>.png` (made unique) and shows it.

    Args:
      stem: file name without extension (unsafe characters replaced).
      image: RGB uint8 array or encoded PNG bytes.
      caption: shown under the image.
      colors: arrays only: palette size (drawing.encode_png; 0 = full colour).
      keep: with `colors`, colours the palette keeps exactly (drawing.encode_png).

    Returns:
      The file name, relative to the folder.
    """
    name = safe_name(stem)
    candidate, n = name, 1
    while candidate in self._names:
      n += 1
      candidate = f"{name}_{n}"
    self._names.add(candidate)
    filename = candidate + ".png"
    data = image if isinstance(image, bytes) else drawing.encode_png(image, colors, keep)
    file_utils.atomic_write_bytes(os.path.join(self.folder, filename), data)
    src = html.escape(filename, quote=True)
    alt = html.escape(caption or candidate, quote=True)
    self._items().append(
      f'<figure><a href="{src}"><img src="{src}" alt="{alt}"></a>'
      f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )
    return filename

  def add_text(self, text: str, preformatted: bool = False) -> None:
    tag = "pre" if preformatted else "p"
    self._items().append(f"<{tag}>{html.escape(text)}</{tag}>")

  def add_table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
      "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    self._items().append(f"<table><tr>{cells}</tr>{body}</table>")

  def add_legend(self, colors: Mapping[str, Sequence[int]], prefix: str = "") -> None:
    entries = "".join(
      f'<span class="swatch" style="background:{_hex(c)}"></span>{html.escape(label)}'
      for label, c in colors.items()
    )
    self._items().append(f"<p>{html.escape(prefix)}{entries}</p>")

  def html(self) -> str:
    """The page: inline CSS, links only to the PNGs written into the folder."""
    nav = " ".join(
      f'<a href="#{a}">{html.escape(t)}</a>'
      for a, t, _ in self._sections
      if len(self._sections) > 1
    )
    parts = [
      "<!DOCTYPE html>",
      '<html lang="en"><head><meta charset="utf-8">',
      f"<title>{html.escape(self.title)}</title>",
      f"<style>{_CSS}</style></head><body>",
      f"<h1>{html.escape(self.title)}</h1>",
    ]
    if nav:
      parts.append(f"<nav>{nav}</nav>")
    for anchor, title, items in self._sections:
      parts.append(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>')
      parts.extend(items)
      parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)

  def write_html(self) -> str:
    """Writes `<folder>/index.html`; returns its path."""
    path = os.path.join(self.folder, INDEX_HTML)
    file_utils.atomic_write_text(path, self.html())
    return path


def write_report(report_dir: str, title: str, fill: Callable[[ReportBuilder], None]) -> str:
  """Builds a report folder atomically: `fill(builder)` adds sections, then index.html.

  An existing `report_dir` is replaced whole once the new one is complete; on
  an error it is left as it was (files.atomic_write_dir).

  Returns:
    The path of `<report_dir>/index.html`.

  Raises:
    IOError: naming the folder, if it cannot be created; what `fill` raises.
  """

  def write(folder):
    builder = ReportBuilder(folder, title)
    fill(builder)
    builder.write_html()

  file_utils.atomic_write_dir(report_dir, write)
  return os.path.join(report_dir, INDEX_HTML)
