"""Train a tiny config and SIGKILL this process before the K-th file-system step of the N-th save.

    python -m tests.engine._kill_during_save CONFIG LOSSES.json --save N --kill-at K [-o KEY=VALUE ...]

The file-system steps are every create, write-open, fsync, rename, symlink and removal made by
plsc.checkpoint and plsc.serialization; `--kill-at -1` kills nobody and prints `STEPS <count>` of
save N, so a test can kill at each one in turn. Every step's loss is written to LOSSES.json as
{global step: loss} when the run ends normally (a killed run writes nothing).
"""
import argparse
import json
import os
import signal
import types

GUARDED = ("makedirs", "replace", "rename", "symlink", "fsync", "remove", "rmtree")


class Tripwire:
    def __init__(self, save_index, kill_at):
        self.save_index, self.kill_at = save_index, kill_at
        self.saves = 0
        self.steps = 0
        self.armed = False

    def tick(self):
        if not self.armed:
            return
        if self.steps == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        self.steps += 1


def guarded_module(module, tripwire):
    """A stand-in for `os` / `shutil` whose guarded functions tick the tripwire first."""
    proxy = types.SimpleNamespace()
    for name in dir(module):
        value = getattr(module, name)
        if name in GUARDED and callable(value):
            def wrapped(*args, _function=value, **kwargs):
                tripwire.tick()
                return _function(*args, **kwargs)
            value = wrapped
        setattr(proxy, name, value)
    return proxy


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("losses")
    parser.add_argument("--save", type=int, required=True, help="which save (1 = the first) to interrupt")
    parser.add_argument("--kill-at", type=int, required=True)
    parser.add_argument("-o", "--override", action="append", default=[])
    args = parser.parse_args()

    import shutil

    from plsc import checkpoint, serialization
    from plsc.config import load_config
    from plsc.engine.trainer import Trainer
    from tests.engine.tiny_run import record_losses

    tripwire = Tripwire(args.save, args.kill_at)
    for module in (checkpoint, serialization):
        module.os = guarded_module(os, tripwire)
    checkpoint.shutil = guarded_module(shutil, tripwire)

    def guarded_open(*open_args, **open_kwargs):
        tripwire.tick()
        return open(*open_args, **open_kwargs)

    serialization.open = guarded_open  # shadows the builtin inside plsc.serialization only
    save = checkpoint.CheckpointManager.save

    def counted_save(self, *save_args, **save_kwargs):
        tripwire.saves += 1
        tripwire.armed = tripwire.saves == tripwire.save_index
        try:
            return save(self, *save_args, **save_kwargs)
        finally:
            if tripwire.armed and tripwire.kill_at < 0:
                print(f"STEPS {tripwire.steps}", flush=True)
            tripwire.armed = False

    checkpoint.CheckpointManager.save = counted_save
    trainer = Trainer(load_config(args.config, args.override))
    start = trainer.state["global_step"]
    losses = record_losses(trainer)
    trainer.train()
    with open(args.losses, "w", encoding="utf-8") as handle:
        json.dump({start + offset + 1: loss for offset, loss in enumerate(losses)}, handle)


if __name__ == "__main__":
    main()
