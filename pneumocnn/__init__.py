"""pneumocnn: a small from-scratch CNN for NORMAL vs PNEUMONIA chest X-rays, shipped as int8 TFLite.

Importing the package does no work. The library lives in stage subpackages, in the order the
data flows: `core` (task, config, files, errors, metadata, run folders; no TensorFlow), `data`
(decoding films, folders, the split, the input pipeline), `network` (the CNN), `training`,
`runtime` (running a saved model, the input guard, Grad-CAM), `evaluation`, `edge` (the exported
file family), `adaptation` (learning from a site's films) and `benchmark`. The commands sit on
top, one module each: `train`, `evaluate`, `export`, `adapt`, `predict`, `explain`, `bench`,
`web` and `app` (with `cli`, their shared skeleton); see `docs/development.md`.
"""

import os

# TensorFlow's C++ start-up chatter (oneDNN, missing CUDA) drowns the progress a user wants to
# see; keep warnings and errors. Set TF_CPP_MIN_LOG_LEVEL yourself to override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
