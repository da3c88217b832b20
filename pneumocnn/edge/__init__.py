"""The edge stage: the exported file family that apps embed.

`export` runs the named steps over a run folder: `prepare` (the run, its validation films, the
threshold, the training sample), `convert` (int8 and float16 TFLite, with `equalize`), `rgb`
(the variant for stock image classifiers: the int8 file's own graph with float32 parts around
it, joined by `graft`, and Pillow's resize from the films' 224 px in front, `resize`),
`guard_head` (the input guard as its second output, grafted on), `parity` (int8 against float,
RGB against int8, the guard head against the guard), `describe` (the metadata), `embedded` (the
TFLite metadata inside each file, written with MediaPipe's writer, made importable by
`mediapipe_metadata`), `card` (the model card) and `family` (writing the files into
place). `recalibrate` gives a family a new threshold.
"""
