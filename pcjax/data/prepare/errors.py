"""The one error of `python -m pcjax.data.prepare`."""


class PrepareError(ValueError):
    """Input that cannot be prepared; the message is one line naming the file at fault."""
