"""The one exception for input a user can fix (a bad argument, a file that is not what it should be).

Services raise it; the CLI prints its message as one ``error:`` line and exits with 2, and under torchrun
:mod:`workbench.distributed` passes it on unchanged. It lives here, below every service, so that nothing needs to
import the CLI to raise it.
"""


class UserError(Exception):
    """An error caused by the command's input: reported as one line, no traceback."""
