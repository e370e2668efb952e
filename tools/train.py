"""Run `plsc-train` from a source checkout: python tools/train.py -c CONFIG [-o Key=value ...]."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plsc.cli import train_main  # noqa: E402

if __name__ == "__main__":
    train_main()
