"""The errors a user can fix; stages print their message instead of a traceback.

`warn` is the same for what does not stop a stage but changes what it does (a setting that
switches something off, a result with nothing in it): one line on stderr, `warning: ...`.
"""

import sys


class SynthdetError(Exception):
    """Bad input (data, params, models); the message says what and where."""


class ModelNotAvailableError(SynthdetError):
    """A model id or path cannot be loaded here (offline, missing folder, wrong format)."""


def warn(message: str) -> None:
    """Tell the user, in one line on stderr, what a setting or a result silently changes."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
