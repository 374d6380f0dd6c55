"""The errors a user can fix; stages print their message instead of a traceback."""


class SynthdetError(Exception):
    """Bad input (data, params, models); the message says what and where."""


class ModelNotAvailableError(SynthdetError):
    """A model id or path cannot be loaded here (offline, missing folder, wrong format)."""
