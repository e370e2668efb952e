"""Run one Trainer (a rank under paddle.distributed.launch) on CONFIG with -o overrides; the test reads
the checkpoint it leaves."""
import sys

import tests.engine.linear_backbone  # noqa: F401  (registers LinearFace)
from plsc.config import load_config
from plsc.engine.trainer import Trainer

Trainer(load_config(sys.argv[1], sys.argv[2:])).train()
