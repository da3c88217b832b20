"""Learning from a site's own labelled films: `calibration` (a new operating threshold on
them) and fine-tuning (adapting the weights).
"""
