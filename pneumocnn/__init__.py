"""pneumocnn: a small from-scratch CNN for NORMAL vs PNEUMONIA chest X-rays, shipped as int8 TFLite.

Importing the package does no work. Each job has its own module: the library (`config`,
`images`, `data`, `model`, `callbacks`, `task`, `metrics`, `reports`, `metadata`, `lite`,
`runners`, `runs`, `gradcam`, `cli`) and the commands (`train`, `evaluate`, `export`, `predict`,
`explain`, `bench`, `app`); see the README's Layout section.
"""

import os

# TensorFlow's C++ start-up chatter (oneDNN, missing CUDA) drowns the progress a user wants to
# see; keep warnings and errors. Set TF_CPP_MIN_LOG_LEVEL yourself to override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
