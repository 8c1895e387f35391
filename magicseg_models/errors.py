"""Errors that reach the user as one line.

Anything raised as a :class:`MagicSegError` is a problem with the user's input or environment
(bad config, unknown class, unreachable storage, corrupt shard). The CLI prints ``str(err)`` on one
line and exits with code 2; every other exception is a bug and keeps its traceback.
"""


class MagicSegError(Exception):
    """A user-facing error: its message is one line that says what is wrong and where."""


class ConfigError(MagicSegError):
    """A config key is unknown or its value is invalid."""


class VocabularyError(MagicSegError):
    """A class name is unknown, duplicated or empty, or a vocabulary file is malformed."""


class AmbiguousClassError(VocabularyError):
    """A class name that names several vocabulary classes (the user must pick the full name)."""


class StorageError(MagicSegError):
    """Storage is unreachable, or a dataset at a URI is missing or malformed."""


class ShardError(StorageError):
    """A shard is missing, corrupt, unlisted, or does not match the schema."""


class BenchmarkDataError(MagicSegError):
    """A benchmark's file or folder is missing, unreadable or not in the expected layout."""


class HealthError(MagicSegError):
    """A build ran outside ``build.health``: the message names the figure, its value and its limit."""


def one_line(err: BaseException | str, limit: int = 240) -> str:
    """The first non-blank line of an error (or text), at most ``limit`` characters: what a one-line user error
    quotes of a library's exception. An empty message gives the exception's type name, never an IndexError."""
    text = err if isinstance(err, str) else str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else (type(err).__name__ if not isinstance(err, str) else "")
    return first if len(first) <= limit else first[: limit - 3] + "..."


class ClusterError(MagicSegError):
    """The compute cluster cannot give a stage what it needs (a GPU where one is required)."""
