"""User-facing errors: one line naming the problem and the fix.

The CLI catches :class:`UserError`, prints ``error: <message>`` to stderr and
exits with status 2, without a traceback.
"""


class UserError(Exception):
    """Bad input from the user (config, data, command line, run folder).

    The message must name the problem *and* the fix, on one line.
    """
