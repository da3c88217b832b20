"""The core: what every stage shares, with no TensorFlow (the edge install uses it too).

`task` (the two tasks, their classes, P(pneumonia) and the decision), `config` (the one frozen
`Config` and its flags), `files` (atomic writes, safe names), `errors` (the error classes and
exit codes), `metadata` (the file beside every exported model), `run_folder` (what a training
run folder holds) and `locations` (where the shipped models live).
"""
