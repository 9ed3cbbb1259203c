"""The one exception type that means "the user's input is wrong".

The CLI turns it into a single line on stderr and exit code 2, so every message must name the
problem *and* the fix ("model file x.pt not found; pass the path of a torch.save()d model").
"""


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2, no traceback."""
