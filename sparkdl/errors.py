"""The error bad input data raises, wherever it is found (on the driver before any job, or inside a task)."""
import re


class DataError(ValueError):
    """A DataFrame's rows are not what the model needs. The message names the DataFrame's role (training,
    validation, evaluation, prediction), the column, what was expected and what was found, with a count and an
    example row where there is one; ``role`` and ``column`` hold the first two."""

    def __init__(self, role, column, problem):
        self.role, self.column, self.problem = role, column, problem
        super().__init__(f"the {role}, column {column!r}: {problem}")


class FitInterrupted(KeyboardInterrupt):
    """A distributed fit stopped by SIGINT (Ctrl-C) or SIGTERM, its Spark jobs cancelled and its workers stopped.
    The model holds the average of round ``synced`` (1-based; 0: none), the last one the driver had: every round in
    jobs mode, epoch ends and the rounds callbacks read in barrier mode. ``epoch`` and ``round`` (1-based; the
    round counted over the whole fit, of ``rounds``) say which round was running."""

    def __init__(self, signal, epoch, round, rounds, synced):
        self.signal, self.epoch, self.round, self.rounds, self.synced = signal, epoch, round, rounds, synced
        where = f"at epoch {epoch}, round {round} of {rounds}" if rounds else "before the first round"
        super().__init__(f"interrupted ({signal}) {where}; the model holds the average of round {synced}"
                         if synced else f"interrupted ({signal}) {where}; the model is as it was before the fit")


# how a DataError raised in a Python worker reads inside the JVM's error text (a PythonException or a
# Py4JJavaError chain): the traceback's last line
_IN_TASK = re.compile(r"sparkdl\.errors\.DataError: the (.+?), column (?:'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"): "
                      r"(.*)")


def from_task_failure(error):
    """The DataError a task raised, if ``error`` (a Spark failure seen on the driver) carries one; else None."""
    match = _IN_TASK.search(str(error))
    if match is None:
        return None
    return DataError(match.group(1), match.group(2) if match.group(2) is not None else match.group(3),
                     match.group(4).strip())
