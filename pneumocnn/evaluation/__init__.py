"""Scoring a model: `metrics` (sensitivity, specificity, AUC, int8 parity), `thresholds`
(choosing the operating point), `uncertainty` (patient-bootstrap intervals, groups), `stability`
(pixel-noise flips), `scoring` (a model on a split, written as a report) and `reports` (plots and
summaries).
"""
