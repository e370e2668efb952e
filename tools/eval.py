"""Run `plsc-eval` from a source checkout: python tools/eval.py -c CONFIG -o Global.pretrained_model=P."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plsc.cli import eval_main  # noqa: E402

if __name__ == "__main__":
    eval_main()
