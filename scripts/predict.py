#!/usr/bin/env python
"""Segment images with a trained actor (the ``rl4seg-predict`` command); ``--help`` lists the options."""
import sys

from pipeline.commands.predict import main

if __name__ == "__main__":
    sys.exit(main())
