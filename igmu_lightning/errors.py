"""User-facing errors: one line that names the culprit and the fix, and a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable


class IGMUError(Exception):
    """A mistake in what the user handed us (a path, a config value, a file); never a bug."""


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
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
