"""Exceptions raised by the workbench SDK."""


class WorkbenchError(Exception):
    """The workbench refused or failed a request.

    `status` is the HTTP status code, or None when no answer was received.
    `message` is the workbench's explanation, meant for the user.
    """

    def __init__(self, status, message):
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self):
        return self.message if self.status is None else f"{self.status}: {self.message}"


class NotInSessionError(WorkbenchError):
    """The environment lacks the variables a workbench session or job provides."""

    def __init__(self, variable):
        super().__init__(None, f"not inside a workbench session: {variable} is not set")
        self.variable = variable
