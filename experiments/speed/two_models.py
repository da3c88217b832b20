"""How fast is a two-model three-class answer against ResNet-50 int8? (issue: adaptation)

The adaptation study found that the binary model deciding NORMAL and the subtype model splitting
pneumonia into bacterial and viral scores better than the subtype model alone
(experiments/adaptation/README.md). A client would then run both shipped int8 files on each
film. This times each file, and ResNet-50 exported to int8 by the same path, one thread, single
image, each in its own process like `python -m pneumocnn.bench`, in alternating rounds (this
machine's timings drift between minutes), and gives the pair's time (the sum of the two files'
medians) as a ratio to ResNet-50's of the same round. Each round is saved as it finishes
(`results/two_models.jsonl`).

Example:

    python experiments/speed/two_models.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from pneumocnn.benchmark.reference import export_reference
from pneumocnn.benchmark.timing import measure_in_subprocess
from pneumocnn.core.locations import default_model

RESULTS = Path(__file__).resolve().parent / "results" / "two_models.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="Alternating timing rounds.")
    parser.add_argument("--runs", type=int, default=50, help="Timed runs per file and round.")
    args = parser.parse_args(argv)
    files = {
        "binary int8": default_model("int8"),
        "subtype int8": default_model("int8", "subtype"),
    }
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    print("| round | binary ms | subtype ms | pair ms | ResNet-50 int8 ms | ResNet-50 / pair |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        reference, _ = export_reference("ResNet50", Path(scratch), 16)
        for round_ in range(1, args.rounds + 1):
            medians = {
                name: measure_in_subprocess(path, 1, 10, args.runs)["median_ms"]
                for name, path in {**files, "ResNet-50 int8": reference}.items()
            }
            pair = medians["binary int8"] + medians["subtype int8"]
            row = {
                "commit": commit,
                "round": round_,
                "median_ms": medians,
                "pair_ms": pair,
                "resnet_over_pair": medians["ResNet-50 int8"] / pair,
                "resnet_over_binary": medians["ResNet-50 int8"] / medians["binary int8"],
            }
            with RESULTS.open("a") as out:  # one line per finished round
                out.write(json.dumps(row) + "\n")
            print(
                f"| {round_} | {medians['binary int8']:.2f} | {medians['subtype int8']:.2f} | "
                f"{pair:.2f} | {medians['ResNet-50 int8']:.2f} | {row['resnet_over_pair']:.1f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
