"""How often does `pneumocnn.adapt` write a family? Its command, run with several seeds.

The adapted subtype family does not always pass the export's int8 check (99% of three-class
decisions on the validation films agreeing with the float model's). This runs the command as a
user would, `adapt(MODEL, SITE, OUT)` with the default recipe and `--seed N`, once per seed, and
saves for each whether a family was written, the int8 agreement the check measured (read from
the family's metadata, or from the refusal), the threshold and the time taken, as
`results/export_rate/<family>-s<seed>.json`, one file as each run finishes: a killed study
resumes where it stopped. Each run's output folder is deleted after it is read; with `--keep DIR`
a refused run's adapted model (its run folder) is moved to `DIR/<family>-s<seed>` first, for
`experiments/int8/subtype_parity.py` to take apart.

Usage (from the project root; a few minutes a run on two cores):

    .venv/bin/python experiments/adaptation/export_rate.py saved_models/pneumocnn_subtype.json \\
        --site-dir ../shared/chest_xray/test --seeds 1 2 3 4 5
    .venv/bin/python experiments/adaptation/export_rate.py --table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from pneumocnn.adaptation.adapt import RUN_DIR, adapt, resolve_base
from pneumocnn.core.adapt_config import AdaptConfig
from pneumocnn.core.files import write_text_atomic
from pneumocnn.core.run_folder import read_threshold
from pneumocnn.edge.parity import ParityError

RESULTS = Path(__file__).resolve().parent / "results" / "export_rate"
AGREEMENT = re.compile(r"decisions agree on ([0-9.]+)%")
PNEUMONIA_CALLS = re.compile(r"pneumonia-vs-NORMAL calls alone on ([0-9.]+)%")


def run_one(model: str, site_dir: str, seed: int, keep: Path | None = None) -> dict:
    """One run of the command; what it wrote or why it refused."""
    recipe = dataclasses.replace(AdaptConfig(), seed=seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="export-rate-") as scratch:
        output = Path(scratch) / "adapted"
        try:
            metadata = adapt(model, site_dir, output, recipe)
        except ParityError as error:
            found = AGREEMENT.search(str(error))
            calls = PNEUMONIA_CALLS.search(str(error))
            kept = None
            if keep is not None:
                kept = keep / f"{resolve_base(model).name}-s{seed}"
                shutil.rmtree(kept, ignore_errors=True)
                shutil.copytree(output / RUN_DIR, kept)
            return {
                "exported": False,
                "agreement": float(found.group(1)) / 100 if found else None,
                "pneumonia_agreement": float(calls.group(1)) / 100 if calls else None,
                "refusal": str(error).split(" Nothing was written")[0],
                "threshold": read_threshold(output / RUN_DIR),
                "seconds": round(time.perf_counter() - started),
                **({"kept": str(kept)} if kept else {}),
            }
        finally:
            shutil.rmtree(output, ignore_errors=True)
    parity = metadata["parity"]
    return {
        "exported": True,
        "agreement": parity["agreement"],
        "pneumonia_agreement": parity.get("pneumonia_agreement"),
        "threshold": metadata["threshold"],
        "seconds": round(time.perf_counter() - started),
    }


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _pneumonia_calls(row: dict) -> float | None:
    """The pneumonia-vs-NORMAL agreement of a subtype run (from its refusal, for a refused run
    saved before the field was)."""
    if row.get("pneumonia_agreement") is not None:
        return row["pneumonia_agreement"]
    found = PNEUMONIA_CALLS.search(row.get("refusal", ""))
    return float(found.group(1)) / 100 if found else None


def table() -> str:
    """The saved runs, a line each, and the rate per family."""
    lines = [
        "| family | seed | exported | int8 agreement (99% needed) | pneumonia calls alone "
        "| threshold | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    rates: dict[str, list[bool]] = {}
    saved = [json.loads(path.read_text()) for path in RESULTS.glob("*.json")]
    for row in sorted(saved, key=lambda row: (row["family"], row["seed"])):
        rates.setdefault(row["family"], []).append(row["exported"])
        lines.append(
            f"| {row['family']} | {row['seed']} | {'yes' if row['exported'] else 'no'} | "
            f"{_share(row['agreement'])} | {_share(_pneumonia_calls(row))} | "
            f"{row['threshold']:.4f} | {row['seconds']} |"
        )
    lines.append("")
    lines += [
        f"{family}: {sum(runs)} of {len(runs)} runs wrote a family"
        for family, runs in rates.items()
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="The family's .json or a run folder.")
    parser.add_argument("--site-dir", help="The site's labelled films.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--keep", type=Path, help="Where to keep refused runs' models.")
    parser.add_argument("--table", action="store_true", help="Print the saved runs and stop.")
    args = parser.parse_args(argv)
    if args.table:
        print(table())
        return 0
    if not args.model or not args.site_dir:
        parser.error("MODEL and --site-dir are needed unless --table is given.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # The family's name as the command resolves MODEL (`saved_models` is `pneumocnn`).
    family = resolve_base(args.model).name
    RESULTS.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        target = RESULTS / f"{family}-s{seed}.json"
        if target.exists():
            logging.info("%s exists; skipped", target.name)
            continue
        row = {"family": family, "model": args.model, "site": args.site_dir, "seed": seed}
        row.update(run_one(args.model, args.site_dir, seed, args.keep))
        write_text_atomic(target, json.dumps(row, indent=1))
        logging.info("%s: %s", target.name, json.dumps(row))
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
