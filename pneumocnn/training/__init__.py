"""The training stage: `loop` (train a `Config` into a run folder), `compile` (loss,
optimiser and metrics), `callbacks` (checkpoint, history, backups), `distill` (teacher models)
and `distribute` (several devices or machines).
"""
