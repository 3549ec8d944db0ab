"""User-facing errors: one line that names the culprit and the fix, and a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable


class IGMUError(Exception):
    """A mistake in what the user handed us (a path, a config value, a file); never a bug."""


# How an IGMUError raised in a spawned worker process starts its line in the parent's exception text.
SPAWNED = f"{IGMUError.__module__}.{IGMUError.__qualname__}: "


def run_main(main: Callable[[], object]) -> None:
    """Run a command-line ``main``; an ``IGMUError`` becomes ``error: <message>`` and exit code 2."""
    try:
        main()
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)


def user_error(err: BaseException | None) -> IGMUError | None:
    """The ``IGMUError`` behind ``err``, also when a library (jsonargparse instantiating a config,
    a DataLoader worker) re-raised it as another exception."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, IGMUError):
            return err
        if type(err).__name__ == "ProcessRaisedException":  # a spawned worker's error, as its traceback text
            lines = [line for line in str(err).splitlines() if line.startswith(SPAWNED)]
            return IGMUError(lines[-1][len(SPAWNED) :]) if lines else None
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
