"""The one exception type for a user's mistake (bad config key, missing file, corrupt record).

The CLI catches `PlscError` and prints its message on one line without a traceback; any other
exception is a bug in plsc and keeps its traceback.
"""


class PlscError(Exception):
    """A problem the user can fix: the message names the file, key or record."""
