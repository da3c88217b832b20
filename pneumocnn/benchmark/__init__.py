"""Benchmarks against the usual models: `reference` (ResNet-50 and friends, exported the same
way), `timing` (latency and memory of a model file) and `training_speed` (images per second).
"""
