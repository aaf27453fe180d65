"""The one exception type meant for users: its message is printed as is, without a traceback."""


class UserError(Exception):
    """Bad input from the user (a flag, a file, a dataset row, a plugin, a reward's output).

    The message is one sentence naming what is wrong and what is allowed.
    """


class NonFiniteError(UserError):
    """The loss, the log-probs or the gradients became NaN or inf: training stops before the weights are updated."""
