#!/usr/bin/env python
"""The ``rl4seg-benchmark-da`` command; ``--help`` lists the options."""
import sys

from pipeline.commands.benchmark_da import main

if __name__ == "__main__":
    sys.exit(main())
