#!/usr/bin/env python
"""Thin entry point of :mod:`pipeline.commands.benchmark_uncertainty`; ``--help`` lists the options."""
import sys

from pipeline.commands.benchmark_uncertainty import main

if __name__ == "__main__":
    sys.exit(main())
