"""Run `plsc-export` from a source checkout: python tools/export.py -c CONFIG -o Global.pretrained_model=P."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plsc.cli import export_main  # noqa: E402

if __name__ == "__main__":
    export_main()
