"""Sphinx configuration of the clustrix documentation site.

Build (warnings are errors, as in ``scripts/test``)::

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

Why Sphinx (with furo and MyST) and not MkDocs: see ``about.md``. What is generated rather
than written: ``_ext/clustrix_docs.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

# Document the clustrix of this checkout, whatever else is installed, and run the notebook's
# kernel (a separate process) on the same one.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)

# The notebook and the examples of the troubleshooting page run on the embedded default
# (``ClusterExecutor()``: local processes). ``ClusterExecutor()`` reads $CLUSTRIX_CONFIG and
# CLUSTRIX_* variables, so none of the builder's may leak in (a CLUSTRIX_CLUSTER_HOST would
# send the notebook's jobs to a real cluster); the job files and the job registry go to a
# scratch directory removed after the build instead of ~/.clustrix and ~/.local/state.
for _name in [name for name in os.environ if name.startswith("CLUSTRIX_")]:
    del os.environ[_name]
_SCRATCH = tempfile.mkdtemp(prefix="clustrix-docs-")
os.environ["CLUSTRIX_REMOTE_WORK_DIR"] = os.path.join(_SCRATCH, "work")
os.environ["CLUSTRIX_STATE_DIR"] = os.path.join(_SCRATCH, "state")

import clustrix  # noqa: E402  (after sys.path is set)

# The troubleshooting page connects (and fails to) during the build; asyncssh's INFO lines
# about it are not the build's news.
logging.getLogger("asyncssh").setLevel(logging.WARNING)

project = "clustrix"
author = "clustrix developers"
copyright = "clustrix developers"
release = version = clustrix.__version__

extensions = [
    "myst_nb",  # MyST Markdown pages and executed notebooks (it sets up myst_parser)
    "sphinx.ext.autodoc",
    "clustrix_docs",  # docs/_ext: configuration reference, backend table, checks
]

exclude_patterns = ["_build", "jupyter_execute", "**/.ipynb_checkpoints", "_ext", "_static"]
root_doc = "index"

# -- MyST ---------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # [text](page.md#a-heading) works, as on GitHub

# -- the notebook: executed on every build by a real Jupyter kernel -----------------------
nb_execution_mode = "force"
nb_execution_raise_on_error = True  # a cell that raises fails the build (unless tagged
nb_execution_timeout = 120  # "raises-exception", as the one showing a remote traceback)
nb_execution_show_tb = True  # the kernel's traceback in the build log when a cell fails

# -- autodoc ------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # show ``cleanup="on_success"``, not the evaluated object
autoclass_content = "class"

# -- HTML ---------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"clustrix {release}"
html_static_path = ["_static"]
html_css_files = ["clustrix.css"]  # error messages wrap (troubleshooting page)
html_show_sourcelink = False


def _remove_scratch(app: object, exception: BaseException | None) -> None:
    shutil.rmtree(_SCRATCH, ignore_errors=True)


def setup(app: object) -> None:
    app.connect("build-finished", _remove_scratch)  # type: ignore[attr-defined]
