"""The kit's error for bad input: a data file, a field or an option that is not what was expected.

Readers and option checks raise :class:`InputError` with a message that names the file (or option), the
field and what was expected; every front end turns it into ``error: <message>`` on stderr and exit code 2,
with no traceback. It subclasses ``ValueError`` so callers that catch ``ValueError`` keep working.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (a data file, a config key, an option value), with a message that says what and where."""
