#!/usr/bin/env python
"""The ``rl4seg-benchmark-rl`` command; ``--help`` lists the options."""
import sys

from pipeline.commands.benchmark_rl import main

if __name__ == "__main__":
    sys.exit(main())
