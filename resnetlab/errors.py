"""One exception type for user-facing failures: the CLI prints its message as one line, without a traceback."""


class ResnetlabError(Exception):
    """A problem the user can fix (bad path, bad option, bad file). The message names it and says what to do."""

    exit_code = 2
    quiet = False  # the CLI prints nothing (a torchrun rank other than 0: rank 0 says the same)

    def __init__(self, message: str, exit_code: int | None = None, quiet: bool = False) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
        self.quiet = quiet
