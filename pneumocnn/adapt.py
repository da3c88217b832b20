"""Adaptation: `python -m pneumocnn.adapt MODEL --site-dir DIR [--output-dir OUT]`.

Fine-tunes a trained model (a run folder, or an exported family: its `.json`, or the folder
holding it, where `saved_models` means the binary family) on a site's labelled films, keeps
labelled training films in the mix, chooses the threshold on out-of-fold predictions so that
its sensitivity holds on new patients of the site with the stated confidence, and writes a
complete int8 family (int8, float16, RGB variant, `.keras`, metadata, model card) to a new
folder. The work is `pneumocnn.adaptation.adapt.adapt`; the recipe's flags come from
`pneumocnn.core.adapt_config.AdaptConfig`.

Example:

    python -m pneumocnn.adapt saved_models --site-dir ../shared/chest_xray/test
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from pneumocnn import cli
from pneumocnn.core.adapt_config import AdaptConfig
from pneumocnn.core.errors import EXIT_OK
from pneumocnn.core.run_folder import ADAPT_CALIBRATION_IMAGES
from pneumocnn.core.settings import add_config_arguments, config_from_args

# The adaptation stage needs TensorFlow: imported in `_command`, so `--help` comes at once.


def default_output_dir(site_dir: str | Path) -> Path:
    """`runs/adapted/<site folder>-<timestamp>`: a new folder, never the model's own."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / "adapted" / f"{Path(site_dir).resolve().name}-{stamp}"


def build_parser() -> argparse.ArgumentParser:
    """The `python -m pneumocnn.adapt` parser: the paths, then one flag per `AdaptConfig`
    field."""
    parser = argparse.ArgumentParser(
        prog="python -m pneumocnn.adapt",
        description="Adapt a trained model to a site's labelled films and export its int8 "
        "family, with a threshold whose sensitivity holds on new patients of the site.",
    )
    parser.add_argument(
        "model",
        help="A run folder, an exported family's .json, or the folder holding it "
        "(saved_models: the binary family; saved_models/pneumocnn_subtype.json: the subtype).",
    )
    parser.add_argument(
        "--site-dir",
        required=True,
        help="The site's labelled films: NORMAL/ and PNEUMONIA/ subfolders (a subtype model "
        "reads each pneumonia film's subtype from its name).",
    )
    parser.add_argument(
        "--output-dir",
        help="A new folder for the adapted family (default: runs/adapted/<site>-<timestamp>).",
    )
    parser.add_argument(
        "--data-dir",
        help="The training data (default: $PNEUMOCNN_DATA_DIR, the model's own data folder, "
        "the site folder's parent when it holds train/, else a kagglehub download).",
    )
    parser.add_argument(
        "--patients",
        metavar="CSV",
        help="A file,patient table, for films whose names do not carry the patient (a DICOM "
        "film's PatientID is read otherwise).",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=None,
        help="Training images that calibrate the int8 ranges (default: "
        f"{ADAPT_CALIBRATION_IMAGES['binary']} for a binary model, "
        f"{ADAPT_CALIBRATION_IMAGES['subtype']} for a subtype one, whose three-class int8 calls "
        "need more).",
    )
    add_config_arguments(parser, AdaptConfig)
    return parser


def _command(args: argparse.Namespace) -> int:
    from pneumocnn.adaptation.adapt import adapt
    from pneumocnn.evaluation.reports import interval_text

    recipe = config_from_args(args, AdaptConfig)
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args.site_dir)
    metadata = adapt(
        args.model,
        args.site_dir,
        output_dir,
        recipe,
        data_dir=args.data_dir,
        patients_csv=args.patients,
        calibration_images=args.calibration_images,
    )
    record = metadata["calibration"]
    achieved, intervals = record["achieved"], record["intervals"]
    point = record["point_estimate"]
    files = metadata["files"]
    print(
        f"Wrote {output_dir}: {files['int8']}, {files['fp16']}, {files['rgb_int8']}, "
        f"{files['keras']}, {files['metadata']}, {files['card']}\n"
        f"Threshold {record['threshold']:.4f} ({metadata['threshold_rule']}).\n"
        f"Out of fold on {record['films']} films of {record['patients']} patients: ROC AUC "
        f"{achieved['roc_auc']:.3f} [{intervals['roc_auc'][0]:.3f}-{intervals['roc_auc'][1]:.3f}]"
        f", sensitivity {achieved['sensitivity']:.3f} [{intervals['sensitivity'][0]:.3f}-"
        f"{intervals['sensitivity'][1]:.3f}], specificity {achieved['specificity']:.3f} "
        f"[{intervals['specificity'][0]:.3f}-{intervals['specificity'][1]:.3f}]; the point "
        f"estimate would have been {point['threshold']:.4f} (specificity "
        f"{point['specificity']:.3f}{interval_text(point, 'specificity')})."
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Returns the exit status (see `pneumocnn.core.errors`)."""
    return cli.run(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
