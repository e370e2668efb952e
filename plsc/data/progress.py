"""Progress of jobs that write or read thousands of images: a tqdm bar in a terminal, log lines otherwise.

A bar's carriage returns would fill a log file or a CI transcript with one line per refresh, so
without a terminal on stderr the same progress is told in a plain line about every 10 % of the work.
"""
import sys
import time


class Progress:
    """A tqdm bar when stderr is a terminal, otherwise a plain log line about every 10 % of the work."""

    def __init__(self, total, description, log, interactive=None):
        self.total, self.description, self.log = total, description, log
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.done, self.started, self.next_report = 0, time.monotonic(), max(1, total // 10)
        self.bar = None
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=description, unit="img")

    def update(self, count=1):
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.done >= self.next_report or self.done == self.total:
            rate = self.done / max(time.monotonic() - self.started, 1e-9)
            self.log(f"{self.description}: {self.done}/{self.total} images ({rate:.0f} images/s)")
            self.next_report = self.done + max(1, self.total // 10)

    def close(self):
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.close()


class NoProgress:
    """Stands in for a Progress when nobody listens (a writer called without one, or without a log)."""

    def update(self, count=1):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        pass


NO_PROGRESS = NoProgress()


def start_progress(total, description, log):
    """A Progress over `total` images told to `log`; NO_PROGRESS when `log` is None (the caller wants quiet)."""
    return NO_PROGRESS if log is None else Progress(total, description, log)
