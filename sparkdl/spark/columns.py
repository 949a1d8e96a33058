"""The few column expressions sparkdl selects (casts, arrays, sizes, aggregates), built as JVM Columns directly.

Both of pyspark's ways cost an application's first fit: every call on a pyspark ``Column`` goes through a wrapper
that captures its call site (three calls to the JVM each, and IPython imported at the first where it is
installed), and a SQL string (``selectExpr``) starts the JVM's SQL parser, whose first use takes 0.15-0.2 s. An
expression here is a small tuple, built in the JVM's own ``functions`` in a few py4j calls; where the DataFrame
has no JVM side (Spark Connect) the same tuple is written as SQL instead.

Expressions: ``col(name)``, ``lit(value)``, ``("cast", e, type)`` with type "float", "double" or "array<float>",
``("fn", name, [e, ...])`` for a function of ``pyspark.sql.functions``' JVM side that takes Columns (array, size,
count, first, max).
"""

_TYPES = ("float", "double", "array<float>")


def col(name):
    return ("col", name)


def lit(value):
    return ("lit", value)


def cast(e, type_name):
    assert type_name in _TYPES, type_name
    return ("cast", e, type_name)


def fn(name, *args):
    return ("fn", name, list(args))


def quoted(name):
    """A column name as Spark reads it literally (dots and all)."""
    return "`" + name.replace("`", "``") + "`"


def select(df, named, keep=False):
    """``df`` with the columns ``named`` ([(name or None, expression)]), after all of ``df``'s own with ``keep``."""
    jdf = getattr(df, "_jdf", None)
    if jdf is None:
        return df.selectExpr(*(["*"] if keep else []), *(sql(e) + ("" if n is None else f" AS {quoted(n)}")
                                                         for n, e in named))
    from pyspark.sql.classic.dataframe import DataFrame
    jvm = df.sparkSession.sparkContext._jvm
    cols = [jvm.org.apache.spark.sql.functions.col("*")] if keep else []
    for n, e in named:
        c = _jvm_column(jvm, e)
        cols.append(c if n is None else c.alias(n))
    return DataFrame(jdf.select(jvm.PythonUtils.toSeq(cols)), df.sparkSession)


def sql(e):
    kind = e[0]
    if kind == "col":
        return quoted(e[1])
    if kind == "lit":
        return repr(e[1])
    if kind == "cast":
        return f"CAST({sql(e[1])} AS {e[2]})"
    return f"{e[1]}({', '.join(sql(a) for a in e[2])})"


def _jvm_column(jvm, e):
    functions, types = jvm.org.apache.spark.sql.functions, jvm.org.apache.spark.sql.types.DataTypes
    kind = e[0]
    if kind == "col":
        return functions.col(quoted(e[1]))
    if kind == "lit":
        return functions.lit(e[1])
    if kind == "cast":
        t = types.createArrayType(types.FloatType) if e[2] == "array<float>" else \
            getattr(types, "FloatType" if e[2] == "float" else "DoubleType")
        return _jvm_column(jvm, e[1]).cast(t)
    args = [_jvm_column(jvm, a) for a in e[2]]
    f = getattr(functions, e[1])
    return f(jvm.PythonUtils.toSeq(args)) if e[1] == "array" else f(*args)
