"""Notebooks run under pytest (nbmake) in quick mode: a few images, a small size, two epochs.

nbmake runs each notebook in a kernel that inherits this environment; the committed outputs
come from a full run and are never rewritten by the tests.
"""

import os

os.environ["PNEUMOCNN_NOTEBOOK_QUICK"] = "1"
