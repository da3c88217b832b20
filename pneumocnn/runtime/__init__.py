"""Running a saved model: `lite` (LiteRT, no TensorFlow), `runners` (one interface for
`.tflite`, `.keras` and run folders), `prediction` (one film's guarded result), `guard` (the
input guard) and `gradcam` (what the network looked at).
"""
