#!/usr/bin/env python
"""Evaluate a checkpoint or a folder of predictions (the ``rl4seg-evaluate`` command); ``--help`` lists the options."""
import sys

from pipeline.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
