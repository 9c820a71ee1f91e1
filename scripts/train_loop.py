#!/usr/bin/env python
"""Run the RL4Seg loop: source pretraining -> N iterations (reward set, reward net, PixelPPO) -> report.

    python scripts/train_loop.py                                   # synthetic benchmark, CPU defaults
    python scripts/train_loop.py --config configs/quick.yaml       # a one-minute smoke run
    python scripts/train_loop.py ppo.iterations=2 data.image_size=32 run_dir=runs/small
    python scripts/train_loop.py --resume runs/default             # continue an interrupted run
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from agents.config import ConfigError, load_config  # noqa: E402
from agents.loop import RL4SegRun  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. ppo.iterations=2")
    args = parser.parse_args(argv)
    try:
        if args.resume:
            if args.overrides or args.config:
                parser.error("--resume uses the run's own config.yaml; it takes no --config or overrides")
            run = RL4SegRun(resume=True, run_dir=args.resume)
        else:
            default = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
            config = load_config(args.config or (default if default.is_file() else None), args.overrides)
            run = RL4SegRun(config)
    except (ConfigError, FileExistsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
