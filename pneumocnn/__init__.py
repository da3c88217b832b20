"""pneumocnn: a small from-scratch CNN for NORMAL vs PNEUMONIA chest X-rays, shipped as int8 TFLite.

Importing the package does no work: each stage lives in its own module
(`config`, `images`, `data`, `model`, `train`, `evaluate`, `export`, `lite`, `predict`).
"""

import os

# TensorFlow's C++ start-up chatter (oneDNN, missing CUDA) drowns the progress a user wants to
# see; keep warnings and errors. Set TF_CPP_MIN_LOG_LEVEL yourself to override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
