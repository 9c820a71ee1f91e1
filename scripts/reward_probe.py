#!/usr/bin/env python
"""Thin entry point of :mod:`pipeline.commands.reward_probe`; ``--help`` lists the options."""
import sys

from pipeline.commands.reward_probe import main

if __name__ == "__main__":
    sys.exit(main())
