"""Errors a user can act on. The CLI prints their message on one line and exits with `exit_code`;
anything else is a bug and keeps its traceback."""


class DQError(Exception):
    """A problem with the user's input: a file, a flag, a recipe key, a checkpoint."""

    exit_code = 2


class RecipeError(DQError):
    def __init__(self, source: str, key: str, problem: str):
        self.source, self.key, self.problem = source, key, problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


class CheckpointError(DQError):
    pass


class NotReadyError(DQError):
    """The request is valid but dq cannot do it yet (a method or route that is not built)."""

    exit_code = 3
