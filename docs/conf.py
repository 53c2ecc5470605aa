"""Sphinx configuration of the dask_pdist documentation site.

Build: ``pip install -e ".[docs]"`` then
``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import importlib.util

import dask_pdist

project = "dask_pdist"
author = "dask_pdist contributors"
copyright = "2026, dask_pdist contributors"
release = dask_pdist.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinxarg.ext",
]

# .rst for the API pages autosummary generates (docs/generated/, not committed)
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: headings get anchors so pages can link to sections ("page.md#section").
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# API reference: one page per public name, generated from the numpydoc docstrings.
autosummary_generate = True
autodoc_typehints = "none"  # the signature shows them; numpydoc's Parameters describe them
# dask_pdist.training subclasses transformers' TrainerCallback (the optional [hf] extra): mocked
# only where transformers is not installed, so that the [docs] extra alone builds the site (the
# mock hides the class's own signature, hence not always)
autodoc_mock_imports = [] if importlib.util.find_spec("transformers") else ["transformers"]
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "pydata_sphinx_theme"
html_title = f"dask_pdist {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path = ["_static"]
