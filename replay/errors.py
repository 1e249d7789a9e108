"""Why ``trackin replay`` stops, and the exit status the ``trackin`` command gives for each.

::

    ReplayError                     exit
    ├── InputError                  2    the file or the spec cannot be replayed (found before any step)
    └── DivergedError               1    the replay ran, but trackin's losses or forecasts are not finite

The command prints ``trackin replay: error: <message>`` on stderr (after the summary, for a diverged run)
instead of a traceback.
"""

from __future__ import annotations

__all__ = ["DivergedError", "InputError", "ReplayError"]


class ReplayError(Exception):
    """Root of replay's errors; ``exit_status`` is what the command returns."""

    exit_status = 1


class InputError(ReplayError, ValueError):
    """An unreadable file (unknown header, bad value, nothing left after filtering) or an invalid spec."""

    exit_status = 2


class DivergedError(ReplayError):
    """The model diverged: a non-finite mean loss, or a forecast that is not finite."""

    exit_status = 1
