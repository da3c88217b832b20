"""Alternating float32 and mixed-bfloat16 timings of the default model's training step.

One bench run compares the two once; on a shared machine one comparison can mislead. This
alternates them, so drift in the machine's load hits both alike.

Example:

    python experiments/speed/bfloat16_repeats.py --trials 3
"""

from __future__ import annotations

import argparse

from pneumocnn.benchmark.training_speed import bfloat16_training_speed, training_speed
from pneumocnn.core.config import Config
from pneumocnn.network.model import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    config = Config()
    for trial in range(args.trials):
        float32 = training_speed(build_model(config), config.batch_size, 10, 3)
        bfloat16 = bfloat16_training_speed(config, config.batch_size, 10, 3)
        print(
            f"trial {trial}: float32 {float32:.0f} images/s, mixed_bfloat16 {bfloat16:.0f} "
            "images/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
