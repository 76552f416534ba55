"""Errors meant for users: each message is one sentence naming the bad value and what would be valid.

The entry points catch `JaxclsError` and print its message without a traceback; anything else is a bug.
"""


class JaxclsError(Exception):
  """Base class of errors caused by the user's config, data or workdir."""


class ConfigError(JaxclsError):
  """A config key or value is unknown or invalid."""


class DataError(JaxclsError):
  """A dataset is missing, empty or malformed."""


class CheckpointError(JaxclsError):
  """A checkpoint cannot be restored into the configured model."""


class NonFiniteLossError(JaxclsError):
  """Training produced a NaN or infinite loss or gradient."""


class WorkdirBusyError(JaxclsError):
  """Another run holds the workdir's lock."""
