#!/usr/bin/env python
"""Thin entry point of :mod:`pipeline.commands.pretrain`; ``--help`` lists the options."""
import sys

from pipeline.commands.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
