"""Dataset converters run as `python -m plsc.data.dataset.tools.<name>`, and what they share."""
import os
import sys

from plsc.errors import PlscError


def write_bytes_atomically(path, data):
    """Write `data` to `path` through a temporary file, so `path` is either absent or complete."""
    temporary = f"{path}.tmp"
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def run_command(convert, **kwargs):
    """Call a converter for a command line: print its summary, or a user error on one line -> exit code."""
    try:
        summary = convert(**kwargs)
    except PlscError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(", ".join(f"{key}: {value}" for key, value in summary.items()))
    return 0
