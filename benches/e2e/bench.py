#!/usr/bin/env python3
"""End-to-end benchmark, run as benches/e2e/run.sh [flags] (see benches/e2e/README.md). The
harness is the package harness/ beside this file: harness/cli.py has the flags and main."""
import sys

from harness.cli import main

if __name__ == "__main__":
    main(sys.argv[1:])
