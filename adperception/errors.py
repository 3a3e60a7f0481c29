"""``UserError``: the mistakes a user can fix, which the tools report in one line each."""

from __future__ import annotations

import sys


class UserError(Exception):
    """A mistake the user can fix: a config key, an input file, a full disk. The message names
    the key or file and what is wrong; the tools ``report`` it instead of a traceback.

    Raised in a DataLoader worker, torch re-raises it in the main process as
    ``type(error)("Caught <type> in DataLoader worker ...<traceback>")``; that message is cut
    back to the original error's own text, so the report stays one line naming the file.
    """

    def __init__(self, *args: object) -> None:
        caught = f"Caught {type(self).__name__} "
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith(caught):
            last = [line for line in args[0].splitlines() if line.strip()][-1]
            prefix = f"{type(self).__name__}: "
            args = (last.split(prefix, 1)[1] if prefix in last else last,)
        super().__init__(*args)

    def report(self) -> int:
        """Print the message as ``error: ...`` lines on stderr; return the tools' exit status."""
        print("\n".join(f"error: {line}" for line in str(self).splitlines()), file=sys.stderr)
        return 2
