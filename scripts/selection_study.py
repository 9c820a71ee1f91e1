#!/usr/bin/env python
"""Thin entry point of :mod:`pipeline.commands.selection_study`; ``--help`` lists the options."""
import sys

from pipeline.commands.selection_study import main

if __name__ == "__main__":
    sys.exit(main())
