"""User-facing errors: what went wrong and how to fix it."""


class EngineError(Exception):
    """A problem the person running the job can fix; printed without a traceback, exit code 2."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  Fix: {fix}")
