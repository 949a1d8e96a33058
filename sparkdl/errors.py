"""The error bad input data raises, wherever it is found (on the driver before any job, or inside a task)."""
import re


class DataError(ValueError):
    """A DataFrame's rows are not what the model needs. The message names the DataFrame's role (training,
    validation, evaluation, prediction), the column, what was expected and what was found, with a count and an
    example row where there is one; ``role`` and ``column`` hold the first two."""

    def __init__(self, role, column, problem):
        self.role, self.column, self.problem = role, column, problem
        super().__init__(f"the {role}, column {column!r}: {problem}")


class BadValues(ValueError):
    """Feature values the workers found null, NaN or infinite while they converted their partitions (a check that
    would cost a Spark pass of its own is made there, on the numbers already in numpy): ``found`` maps a problem of
    PROBLEMS to [rows, example features, example label], summed over the workers, of ``rows`` in all. SparkTrainer
    turns it into the DataError that names the DataFrame and the column (``data_error``)."""

    PROBLEMS = (("null_values", "hold null values"), ("nonfinite", "hold NaN or infinite values"))

    def __init__(self, found, rows):
        self.found, self.rows = found, rows
        super().__init__(f"bad feature values in {rows} rows: {found}")

    @classmethod
    def of(cls, founds, rows):
        """The workers' ``found`` dicts added up (the first example of each problem stays); None if all are empty."""
        total, kinds = {}, dict(cls.PROBLEMS)
        for found in founds:
            for kind, entry in (found if isinstance(found, dict) else {}).items():
                if kind in kinds and isinstance(entry, list) and len(entry) == 3 and type(entry[0]) is int \
                        and entry[0] > 0:
                    total.setdefault(kind, [0, entry[1], entry[2]])[0] += entry[0]
        return cls(total, rows) if total else None

    def data_error(self, what, column, label_col="label"):
        """The DataError, worded as the driver's own checks word it."""
        for kind, problem in self.PROBLEMS:
            if kind in self.found:
                count, x_text, y_text = self.found[kind]
                example = f"; e.g. {column}={x_text}" + (f", {label_col}={y_text}" if y_text else "")
                return DataError(what, column, f"{count} of {self.rows} rows {problem}{example}")


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
