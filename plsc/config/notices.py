"""One-line warnings for settings plsc accepts but treats differently from what was asked.

Each distinct message goes to stderr once per process, however often the code that notices it
runs (a schedule built per federated round, a flag checked per rank start-up).
"""
import sys

_ALREADY_SAID = set()


def warn_once(message):
    """Print `plsc: warning: <message>` to stderr the first time this message comes up; True if printed."""
    if message in _ALREADY_SAID:
        return False
    _ALREADY_SAID.add(message)
    print(f"plsc: warning: {message}", file=sys.stderr, flush=True)
    return True
