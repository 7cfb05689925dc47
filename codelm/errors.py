"""Errors a user can fix. The CLI prints these as one line, without a traceback."""
import sys



class CodelmError(Exception):
    """Base class: bad input, missing file, inconsistent checkpoint, ..."""


class CheckpointError(CodelmError):
    """A checkpoint is missing, corrupt, or disagrees with its config."""


class TokenizerError(CodelmError):
    """A tokenizer is missing, unreadable, or lacks a token a feature needs."""


class ConfigError(CodelmError):
    """A config or recipe file has an unknown key, a wrong type or a bad value."""


class DataError(CodelmError):
    """A data file is malformed (the message names the file and line)."""


# The command being run ("codelm eval"), set by the CLI, so library warnings name the command the
# user typed rather than the module that printed them.
COMMAND = "codelm"


def warn(message: str) -> None:
    """One warning line on stderr, prefixed with the running command."""
    print(f"{COMMAND}: warning: {message}", file=sys.stderr, flush=True)
