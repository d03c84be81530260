"""Sphinx configuration of regsweep's manual: Markdown pages (MyST) in the Furo theme, built strictly.

`make docs` (and so `make test`) builds with `-W --keep-going`: every warning is an error, so a link to
a page or a section that does not exist fails CI. Nothing here reaches the network (no intersphinx), so
the build behaves the same on a closed machine.
"""

project = "regsweep"
author = "the regsweep maintainers"
copyright = "the regsweep maintainers"

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = []

# `page.md#section` links are resolved against the headings of the target page (levels 1-3) and
# checked: a renamed heading breaks the build instead of a reader's link.
myst_heading_anchors = 3

# Every cross-reference must resolve (object references included, should a page ever use one).
nitpicky = True

html_theme = "furo"
html_title = "regsweep"
html_static_path = []
html_show_sourcelink = False
# No build date in the pages: the same sources give the same site.
html_last_updated_fmt = None
