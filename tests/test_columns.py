"""sparkdl.spark.columns: the expressions built in the JVM give what the same expressions written as SQL give
(the form used where a DataFrame has no JVM side, Spark Connect), and data.prepare keeps every kind of features."""
import numpy as np
import pytest

from sparkdl.spark import columns as C, data

EXPRESSIONS = [
    ("x", C.cast(C.col("a.b"), "array<float>")),
    ("y", C.cast(C.col("n"), "double")),
    ("z", C.fn("array", C.cast(C.col("n"), "float"), C.cast(C.col("m"), "float"))),
    (None, C.fn("size", C.col("a.b"))),
]
AGGREGATES = [(None, C.fn("count", C.lit(1))), (None, C.fn("first", C.fn("size", C.col("a.b")))),
              (None, C.fn("max", C.col("n")))]


def test_the_sql_form():
    assert [C.sql(e) for _, e in EXPRESSIONS] == [
        "CAST(`a.b` AS array<float>)", "CAST(`n` AS double)", "array(CAST(`n` AS float), CAST(`m` AS float))",
        "size(`a.b`)"]

    class NoJvm:   # a DataFrame without a JVM side: its selectExpr is what runs
        def selectExpr(self, *exprs):
            return exprs
    assert C.select(NoJvm(), [("x", C.col("q`r"))], keep=True) == ("*", "`q``r` AS `x`")


@pytest.mark.spark
@pytest.mark.parametrize("named,keep", [(EXPRESSIONS, False), (EXPRESSIONS, True), (AGGREGATES, False)])
def test_jvm_columns_give_what_the_sql_gives(spark, named, keep):
    df = spark.createDataFrame([([1.5, 2.0], 3, 4.0), (None, 5, None), ([], 7, 1.0)],
                               "`a.b` array<double>, n int, m double")
    built = C.select(df, named, keep)
    written = df.selectExpr(*(["*"] if keep else []), *(C.sql(e) + ("" if n is None else f" AS `{n}`")
                                                         for n, e in named))
    assert built.schema.simpleString() == written.schema.simpleString()
    assert [tuple(r) for r in built.collect()] == [tuple(r) for r in written.collect()]


@pytest.mark.spark
def test_prepare_makes_float_arrays_and_double_labels_of_every_kind_of_features(spark):
    from pyspark.ml.linalg import Vectors
    df = spark.createDataFrame([(Vectors.dense([1.0, 2.0]), [1, 2], 1.5, 2.5, 1)], ["v", "arr", "p", "q", "label"])
    for features, want in (("v", [1.0, 2.0]), ("arr", [1.0, 2.0]), (["p", "q"], [1.5, 2.5]), ("p", [1.5])):
        for keep in (False, True):
            out = data.prepare(df, features, "label", keep=keep)
            assert out.schema[data.X].dataType.simpleString() == "array<float>"
            assert out.columns == (df.columns if keep else []) + [data.X, data.Y]
            row = out.first()
            np.testing.assert_array_equal(row[data.X], want)
            assert row[data.Y] == 1.0 and isinstance(row[data.Y], float)
