"""A prepared row's feature values as the checks see them: shown in an error message, and the rows holding null,
NaN or infinite values counted as a worker converts its rows (sparkdl.spark.data.batch_to_numpy's ``found``)."""
import numpy as np


def show(values):
    """A short text for one example value (an array is cut after a few values)."""
    if values is None:
        return "null"
    if isinstance(values, (list, tuple)):
        head = ", ".join("null" if v is None else f"{v:g}" for v in values[:4])
        return f"[{head}{', ...' if len(values) > 4 else ''}] ({len(values)} values)"
    return f"{values:g}"


def find_bad_values(values, start, x, y, found):
    """Count the rows of ``x`` holding null values (Arrow's validity of ``values`` from ``start``; they are NaN in
    ``x``; None: no nulls) and those holding NaN or infinite ones into ``found``, with the first of each as an example."""
    n, d = x.shape
    if np.isfinite(x).all():   # 2.5 ms for 10,000 rows of 784 values
        return
    null = np.zeros(x.shape, bool)
    if values is not None and values.null_count:
        null = values.is_null().to_numpy(zero_copy_only=False)[start:start + n * d].reshape(n, d)
    null_rows = null.any(axis=1)
    rows = {"null_values": null_rows, "nonfinite": ~np.isfinite(x).all(axis=1) & ~null_rows}
    for kind, bad in rows.items():
        count = int(bad.sum())
        if not count:
            continue
        entry = found.setdefault(kind, [0, None, None])
        if entry[1] is None:
            i = int(np.argmax(bad))
            entry[1] = show([None if gap else float(v) for gap, v in zip(null[i], x[i])])
            entry[2] = None if y is None else show(float(y[i]))
        entry[0] += count
