"""Records the withheld half's figures of the shipped models in their metadata (and cards).

The withheld half of the official test split (311 films, no patient shared with the development
half) is never in this repository: it was scored on commit b95f1ca by a scorer outside it, and
the figures below are that scorer's, as the project's issue on adaptation reports them. This
script writes them, with their source, into `saved_models/pneumocnn.json` and
`saved_models/pneumocnn_subtype.json` (as `withheld_half`), notes that the threshold's films
also chose the recipe (`calibration.selection`), and regenerates the model cards
(`pneumocnn.edge.family.describe_again`: the model files are untouched, their checksums stay).

Usage:

    python experiments/tools/record_withheld.py
"""

from __future__ import annotations

import sys

from pneumocnn.core.locations import default_model
from pneumocnn.edge.family import describe_again, read_family

SOURCE = (
    "Scored on commit b95f1ca by a scorer outside this repository, on the withheld half of the "
    "official test split (patients disjoint from the development half)"
)
SELECTION = (
    "are the development half of the official test split, which also chose the recipe and the "
    "checkpoint rule"
)
WITHHELD = {
    "binary": {
        "source": SOURCE,
        "films": 311,
        "threshold": 0.5234375,
        "achieved": {"accuracy": 0.887, "roc_auc": 0.932, "sensitivity": 0.938,
                     "specificity": 0.803},
        "intervals": {"accuracy": [0.852, 0.923], "roc_auc": [0.901, 0.960],
                      "sensitivity": [0.902, 0.969], "specificity": [0.730, 0.873]},
        "groups": {"NORMAL IM-": {"films": 33, "recall": 32 / 33},
                   "NORMAL NORMAL2-": {"films": 84, "recall": 63 / 84},
                   "PNEUMONIA bacterial": {"films": 120, "recall": 113 / 120},
                   "PNEUMONIA viral": {"films": 74, "recall": 66 / 74}},
    },
    "subtype": {
        "source": SOURCE,
        "films": 311,
        "threshold": 0.68359375,
        "achieved": {"three_class_accuracy": 0.788, "normal_recall": 0.675},
        "note": "Only the three-class accuracy and the NORMAL recall were reported for this "
        "model.",
    },
}  # fmt: skip


def main() -> int:
    for task, record in WITHHELD.items():
        family = read_family(default_model("metadata", task))
        calibration = {**family.metadata["calibration"], "selection": SELECTION}
        describe_again(family, {"withheld_half": record, "calibration": calibration})
        print(f"Recorded the withheld half in {family.folder / family.files['metadata']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
