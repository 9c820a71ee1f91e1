#!/usr/bin/env python
"""Thin entry point of :mod:`pipeline.commands.reward_audit`; ``--help`` lists the options."""
import sys

from pipeline.commands.reward_audit import main

if __name__ == "__main__":
    sys.exit(main())
