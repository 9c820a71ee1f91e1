"""The command-line programs (``rl4seg-train``, ``-predict``, ``-evaluate``, ``-benchmark-da``, ...).

Every ``main(argv)`` is wrapped by :func:`cli`: expected failures (bad files, bad values, missing files, a
locked or damaged run directory, a full disk, a read-only folder) print one line ``error: <file or key>:
<problem>`` and exit with status 2; ``--debug`` (any command) shows the traceback instead.
"""
from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import Any

#: the failures a user can cause and fix: their message is the whole story
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError, ImportError)


def error_message(exc: BaseException) -> str:
    """``<file>: <problem>`` for an OS error (naming the file when the OS did), else the exception's text."""
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.errno is not None:
        where = exc.filename or "(a file being written)"
        hint = {errno.ENOSPC: "no space left on the device", errno.EACCES: "permission denied",
                errno.EROFS: "read-only file system", errno.EDQUOT: "disk quota exceeded"}.get(exc.errno)
        return f"{where}: {hint or exc.strerror or exc}"
    return str(exc) or type(exc).__name__


def cli(main: Callable[[list[str] | None], Any]) -> Callable[[list[str] | None], Any]:
    """Wrap a command's ``main(argv)``: ``--debug`` is taken out of argv (tracebacks shown), and otherwise an
    expected failure becomes ``error: ...`` on stderr and the return value 2."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> Any:
        args = list(sys.argv[1:] if argv is None else argv)
        debug = "--debug" in args
        args = [a for a in args if a != "--debug"]
        if debug:
            return main(args)
        try:
            return main(args)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except EXPECTED_ERRORS as exc:
            print(f"error: {error_message(exc)}", file=sys.stderr)
            print("(run with --debug for the traceback)", file=sys.stderr)
            return 2

    return wrapper


__all__ = ["EXPECTED_ERRORS", "cli", "error_message"]
