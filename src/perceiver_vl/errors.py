"""User errors of the command line: which exceptions are the user's to fix, and how they print.

Every ``perceiver-vl`` command runs inside :func:`user_errors`: an exception that a user can fix
(a wrong argument, a missing, truncated or corrupt file, a full disk, bad data) prints as one
message naming what failed, with the fix when the error carries one, and exits non-zero
(:data:`EXIT_USER_ERROR`). Anything else is a bug and keeps its traceback. ``--debug`` (or
``PERCEIVER_VL_DEBUG=1``) shows the traceback of user errors too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import sys
from collections.abc import Iterator

DEBUG_ENV = "PERCEIVER_VL_DEBUG"
EXIT_USER_ERROR = 1

# RuntimeError texts of torch / the zip reader that mean "this file is damaged"
_CORRUPT_FILE_MARKERS = (
    "PytorchStreamReader",
    "failed finding central directory",
    "inline_container",
    "unexpected EOF",
    "file write failed",
)
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class UserError(ValueError):
    """An error the user fixes (bad argument, file or data); the message names it and the fix."""


def _library_user_errors() -> tuple[type[BaseException], ...]:
    """Known library exception types that always mean bad input (imported lazily)."""
    types: list[type[BaseException]] = [pickle.UnpicklingError, json.JSONDecodeError]
    with contextlib.suppress(ImportError):
        from safetensors import SafetensorError

        types.append(SafetensorError)
    with contextlib.suppress(ImportError):
        import yaml

        types.append(yaml.YAMLError)
    with contextlib.suppress(ImportError):
        from perceiver_vl.data.failures import TooManyFailuresError

        types.append(TooManyFailuresError)
    return tuple(types)


def describe_user_error(error: BaseException) -> str | None:
    """One message for a user error, or None when ``error`` is not one (a bug)."""
    if isinstance(error, UnicodeDecodeError):
        return (
            f"a file is not valid UTF-8 text ({error.reason} at byte {error.start}); "
            "save it as UTF-8 (without a byte-order mark)"
        )
    if isinstance(error, ValueError):
        return str(error)
    if isinstance(error, _library_user_errors()):
        return f"{type(error).__name__}: {error}"
    if isinstance(error, OSError):
        name = f" {error.filename!r}" if error.filename else ""
        if error.errno in _DISK_FULL:
            return (
                f"no space left on the device{name} ({error.strerror or error}); free space or "
                "write elsewhere (files already written were left intact)"
            )
        if isinstance(error, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
            return (
                str(error)
                if not error.filename or error.strerror is None
                else (f"{error.strerror}:{name}")
            )
        if isinstance(error, PermissionError):
            return f"permission denied:{name}; check the path's owner and mode"
        return f"{type(error).__name__}: {error}"
    if isinstance(error, RuntimeError) and any(m in str(error) for m in _CORRUPT_FILE_MARKERS):
        return (
            f"a file is truncated or corrupt ({str(error).splitlines()[0]}); "
            "re-create or re-download it"
        )
    return None


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """(whether ``--debug`` is among ``argv`` or the environment asks for tracebacks, ``argv``
    without ``--debug``)."""
    rest = [a for a in argv if a != "--debug"]
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return env or len(rest) != len(argv), rest


@contextlib.contextmanager
def user_errors(command: str, debug: bool) -> Iterator[None]:
    """Turn user errors raised inside into one message on stderr and ``SystemExit(1)``."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:
        message = describe_user_error(error)
        if message is None or debug:
            raise
        cause = error.__cause__
        if cause is not None and str(cause) and str(cause) not in message:
            message += f" (cause: {type(cause).__name__}: {str(cause).splitlines()[0]})"
        print(f"perceiver-vl {command}: error: {message}", file=sys.stderr)
        print(
            f"(run with --debug or {DEBUG_ENV}=1 to see the traceback)",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_USER_ERROR) from None


__all__ = [
    "DEBUG_ENV",
    "EXIT_USER_ERROR",
    "UserError",
    "debug_requested",
    "describe_user_error",
    "user_errors",
]
