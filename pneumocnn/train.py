"""Training: `python -m pneumocnn.train --data-dir ../shared/chest_xray`.

The flags are generated from `pneumocnn.core.config.Config`; the work is
`pneumocnn.training.loop.train`, which writes a run folder (`runs/<timestamp>` by default).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from pneumocnn import cli
from pneumocnn.core.config import Config
from pneumocnn.core.errors import EXIT_OK, ResumableError, UsageError
from pneumocnn.core.run_folder import CONFIG_FILE, SUMMARY_FILE, worker_dir
from pneumocnn.core.settings import add_config_arguments, config_from_args

# TensorFlow, and the training stage that needs it, are imported inside `_command`'s steps, so
# `--help` and flag errors come at once and without TensorFlow's start-up messages.


def build_parser() -> argparse.ArgumentParser:
    """The `python -m pneumocnn.train` parser: one flag per `Config` field."""
    parser = argparse.ArgumentParser(
        prog="python -m pneumocnn.train",
        description="Train the pneumocnn classifier and write a run folder.",
    )
    add_config_arguments(parser, Config)
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="Continue an interrupted run from its last finished epoch, with its own config.",
    )
    return parser


def _train_or_explain_a_lost_worker(config: Config, resume: bool = False) -> Path:
    """`train`, with a message that says how to go on when a worker of the run was lost."""
    import tensorflow as tf

    from pneumocnn.training.loop import train

    try:
        return train(config, resume=resume)
    except tf.errors.UnavailableError as error:
        # Raised on the survivors when a worker of a multi-worker run dies.
        raise ResumableError(
            f"A worker of the multi-worker run was lost: {error.message.splitlines()[0]} "
            f"Received: TF_CONFIG={os.environ.get('TF_CONFIG')!r}. Restart every worker with "
            f"`python -m pneumocnn.train --resume {config.output_dir}` and its own $TF_CONFIG: "
            "each resumes from its last finished epoch."
        ) from error


def _command(args: argparse.Namespace) -> int:
    if args.resume:
        extra = [
            field.name
            for field in dataclasses.fields(Config)
            if getattr(args, field.name) is not None
        ] + (["config"] if args.config else [])
        if extra:
            raise UsageError(
                "--resume continues a run with its own config.json; other flags would "
                f"change it midway. Received: --resume with {extra}. Drop those flags."
            )
        # A worker of a multi-worker run resumes from its own copy (see `worker_dir`).
        own_dir = worker_dir(Path(args.resume), "multiworker")
        config_dir = own_dir if (own_dir / CONFIG_FILE).exists() else Path(args.resume)
        config = Config.load(config_dir / CONFIG_FILE)
        run_dir = _train_or_explain_a_lost_worker(
            dataclasses.replace(config, output_dir=args.resume), resume=True
        )
    else:
        config = config_from_args(args, Config)
        run_dir = _train_or_explain_a_lost_worker(config)
    if worker_dir(run_dir, config.strategy) != run_dir:
        print(f"Worker finished; the chief wrote the run folder {run_dir}")
        return EXIT_OK
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    print(
        f"Run folder: {run_dir}\n"
        f"Best epoch {summary['best_epoch']}/{summary['epochs_run']}: "
        f"val AUC {summary['val_auc']:.4f}, accuracy {summary['val_accuracy']:.4f}, "
        f"sensitivity {summary['val_sensitivity']:.4f}, "
        f"specificity {summary['val_specificity']:.4f} (threshold 0.5); "
        f"{summary['parameters']:,} parameters; "
        f"{summary['seconds_per_epoch']:.1f} s/epoch, {summary['images_per_second']:.0f} images/s"
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Returns the exit status (see `pneumocnn.cli`)."""
    return cli.run(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
