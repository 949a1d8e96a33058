"""The error bad input data raises, wherever it is found (on the driver before any job, or inside a task)."""
import re


class DataError(ValueError):
    """A DataFrame's rows are not what the model needs. The message names the DataFrame's role (training,
    validation, evaluation, prediction), the column, what was expected and what was found, with a count and an
    example row where there is one; ``role`` and ``column`` hold the first two."""

    def __init__(self, role, column, problem):
        self.role, self.column, self.problem = role, column, problem
        super().__init__(f"the {role}, column {column!r}: {problem}")


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
