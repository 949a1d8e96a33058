"""What a worker's conversion of its rows finds in the feature values (null, NaN, infinite): the checks a fit leaves
out of its Spark pass (sparkdl.spark.data.batch_to_numpy's ``found``, sparkdl.errors.BadValues). No Spark."""
import numpy as np
import pyarrow as pa

from sparkdl.errors import BadValues, DataError
from sparkdl.spark import data


def batch(rows, labels):
    x = pa.array(rows, pa.list_(pa.float32()))
    return pa.record_batch([x, pa.array(labels, pa.float64())], names=[data.X, data.Y])


def test_good_rows_find_nothing():
    found = {}
    x, y = data.batch_to_numpy(batch([[1.0, 2.0], [3.0, -4.0]], [0, 1]), 2, found=found)
    assert found == {} and x.tolist() == [[1.0, 2.0], [3.0, -4.0]] and y.tolist() == [0, 1]


def test_null_nan_and_infinite_values_are_counted_by_row_with_the_first_as_example():
    found = {}
    rows = [[1.0, None, 0.0], [0.0, 0.0, 0.0], [float("nan"), 1.0, None], [2.0, float("-inf"), 0.5],
            [0.0, float("nan"), 0.0]]
    data.batch_to_numpy(batch(rows, [0, 1, 2, 1, 0]), 3, found=found)
    assert found == {"null_values": [2, "[1, null, 0] (3 values)", "0"],   # a row with a null counts once, as null
                     "nonfinite": [2, "[2, -inf, 0.5] (3 values)", "1"]}
    data.batch_to_numpy(batch([[float("inf"), 0.0, 0.0]], [2]), 3, found=found)   # a second batch adds up
    assert found["nonfinite"] == [3, "[2, -inf, 0.5] (3 values)", "1"]


def test_the_workers_findings_add_up_into_one_data_error_worded_as_the_drivers_checks():
    a = {"nonfinite": [1, "[nan, 0] (2 values)", "1"]}
    b = {"nonfinite": [2, "[inf, 0] (2 values)", "0"], "null_values": [1, "[null, 0] (2 values)", "0"]}
    bad = BadValues.of([a, {}, b, None, {"nonfinite": ["2", None, None]}], 40)   # malformed entries are ignored
    assert bad.found == {"nonfinite": [3, "[nan, 0] (2 values)", "1"], "null_values": [1, "[null, 0] (2 values)", "0"]}
    e = bad.data_error("training DataFrame", "features", "label")
    assert isinstance(e, DataError) and (e.role, e.column) == ("training DataFrame", "features")
    assert str(e) == ("the training DataFrame, column 'features': 1 of 40 rows hold null values; "
                      "e.g. features=[null, 0] (2 values), label=0")   # null values are named first, as validate does
    assert BadValues.of([{}, None], 5) is None
    unlabelled = BadValues({"nonfinite": [1, "[nan] (1 values)", None]}, 3).data_error("validation DataFrame", "f")
    assert str(unlabelled).endswith("1 of 3 rows hold NaN or infinite values; e.g. f=[nan] (1 values)")


def test_a_large_batch_of_finite_values_finds_nothing_and_comes_through_unchanged():
    x = np.random.default_rng(0).random((1000, 784), dtype=np.float32)
    b = pa.record_batch([data.float_lists(x), pa.array(np.zeros(1000))], names=[data.X, data.Y])
    found = {}
    got, _ = data.batch_to_numpy(b, 784, found=found)
    assert found == {} and np.array_equal(got, x)
