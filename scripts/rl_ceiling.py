#!/usr/bin/env python
"""Thin entry point of :mod:`pipeline.commands.rl_ceiling`; ``--help`` lists the options."""
import sys

from pipeline.commands.rl_ceiling import main

if __name__ == "__main__":
    sys.exit(main())
