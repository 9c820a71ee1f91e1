#!/usr/bin/env python
"""The ``rl4seg-calibrate-anatomy`` command; ``--help`` lists the options."""
import sys

from pipeline.commands.calibrate_anatomy import main

if __name__ == "__main__":
    sys.exit(main())
