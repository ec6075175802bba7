"""Errors of the core library, by cause.

The CLI maps every ``QmdError`` to one ``Error: ...`` line and exit status 1;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class QmdError(Exception):
    """Base of every error the user can act on."""


class ConfigError(QmdError):
    """A setting, a config file or a model repository is malformed."""


class ArtifactMissing(QmdError):
    """A model file the repository needs has not been exported or downloaded."""


class ServerError(QmdError):
    """The local tritonserver could not be started, found or stopped."""


class ServerUnavailable(ServerError):
    """No server answers at the configured address."""


class InferenceError(QmdError):
    """The server answered a request with an error."""


class RequestTimeout(InferenceError):
    """The server is up but did not answer within the client's timeout."""


class ExportError(QmdError):
    """A model conversion failed or its parity check did not hold."""


class InputError(QmdError):
    """A request's input cannot be used as given (empty, wrong type, ...)."""


class NotFound(InputError):
    """A document (or another named thing) the request names does not exist; ``suggestions``: the closest
    names that do (an MCP ``get`` lists them)."""

    def __init__(self, message: str, suggestions: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.suggestions = list(suggestions)


class IndexMissing(QmdError):
    """No index exists yet at the configured location."""


class IndexCorrupt(QmdError):
    """The index file is not a readable qmd-triton index."""


# What every IndexCorrupt message says, and IndexUnavailable's for a file that cannot be read: how a client
# (the health probe) tells "the index cannot be trusted" from any other refused request.
INDEX_DAMAGE_MARKS = (" is damaged (", " is not a readable qmd-triton index", "cannot read or write ")


def says_index_is_damaged(message: str) -> bool:
    return any(mark in message for mark in INDEX_DAMAGE_MARKS)


class IndexReadOnly(QmdError):
    """The index (or its folder) cannot be written: it can be searched, not changed."""


class DiskFull(QmdError):
    """The disk holding the index is full; the change was rolled back."""


class IndexUnavailable(QmdError):
    """The index file cannot be opened, read or written (I/O error, busy, ...)."""


class FingerprintMismatch(QmdError):
    """The index was embedded with another model, prompt format or chunking."""


def parse_json_input(raw: str | bytes, subject: str) -> object:
    """``raw`` parsed as JSON; text that is not JSON, or is nested past Python's recursion limit, is one
    ``InputError`` naming the ``subject`` (the caller checks the shape it needs)."""
    import json

    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{subject} is not valid JSON: {e}") from None
    except RecursionError:
        raise InputError(f"{subject} is nested too deeply") from None
