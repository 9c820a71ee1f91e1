"""Run the RL4Seg loop: source pretraining -> N iterations (reward set, reward net, PixelPPO) -> report.

    rl4seg-train                                            # synthetic benchmark, CPU defaults (configs/default.yaml)
    rl4seg-train --config configs/quick.yaml                # a one-minute smoke run
    rl4seg-train ppo.iterations=2 data.image_size=32 run_dir=runs/small
    rl4seg-train --print-config ppo.iterations=2            # the resolved config, then exit
    rl4seg-train --resume runs/default                      # continue an interrupted run
    rl4seg-train --resume runs/default --from-iteration 1   # ... forgetting iterations 2.. (e.g. a damaged one)

``python scripts/train_loop.py`` is the same command. ``--config quick`` names a config shipped with the
package (default, quick, camus, paper). Config errors exit with status 2 and name the key and its source.
"""
from __future__ import annotations

from pipeline.commands import cli

import argparse
import sys
from pathlib import Path

from agents.distributed import shutdown_distributed
from pipeline.config import CONFIG_DIR, ConfigError, config_to_yaml, default_config_path, load_config
from pipeline.loop import RL4SegRun
from pipeline.run_dir import DamagedRunError, RunLockedError


def resolve_config_path(name: str | None) -> Path:
    """``None`` -> the packaged default; a shipped name (``quick``) -> its YAML; otherwise the path as given."""
    if name is None:
        return default_config_path()
    path = Path(name)
    if not path.exists() and (CONFIG_DIR / f"{name}.yaml").is_file():
        return CONFIG_DIR / f"{name}.yaml"
    return path


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rl4seg-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="YAML config, or the name of a shipped one: default, quick, camus, paper "
                             "(default: default)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR")
    parser.add_argument("--from-iteration", type=int, default=None, metavar="N",
                        help="with --resume: forget the iterations after N first (e.g. when one is damaged)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. ppo.iterations=2")
    args = parser.parse_args(argv)
    if args.from_iteration is not None and not args.resume:
        parser.error("--from-iteration goes with --resume RUN_DIR")
    try:
        if args.resume:
            if args.overrides or args.config:
                parser.error("--resume uses the run's own config.yaml; it takes no --config or overrides")
            if args.print_config:
                print(config_to_yaml(load_config(Path(args.resume) / "config.yaml")), end="")
                return 0
            run = RL4SegRun(resume=True, run_dir=args.resume, from_iteration=args.from_iteration)
        else:
            config = load_config(resolve_config_path(args.config), args.overrides)
            if args.print_config:
                print(config_to_yaml(config), end="")
                return 0
            run = RL4SegRun(config)
    except (ConfigError, FileExistsError, FileNotFoundError, RunLockedError, DamagedRunError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run.run()
    shutdown_distributed()  # under torchrun: leave the process group cleanly (one process: nothing to do)
    return 0


if __name__ == "__main__":
    sys.exit(main())
