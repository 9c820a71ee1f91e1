#!/usr/bin/env python
"""Run the RL4Seg loop (the ``rl4seg-train`` command); ``--help`` lists the options."""
import sys

from pipeline.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
