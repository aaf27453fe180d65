"""Errors that reach the user as one sentence with an exit code, without a traceback."""


class ReportedError(Exception):
    """An error the command line reports as its message alone (one sentence) and ``exit_code``."""

    exit_code = 2


class UserError(ReportedError):
    """Bad input from the user (a flag, a file, a dataset row, a plugin, a reward's output).

    The message is one sentence naming what is wrong and what is allowed.
    """


class NonFiniteError(ReportedError):
    """The loss, the log-probs or the gradients became NaN or inf: training stops before the weights are updated."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (a library's often goes on for pages), or its type's name."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
