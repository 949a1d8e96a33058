"""spark-submit entry point: add a saved sparkdl model's predictions to a DataFrame and write them as Parquet.

    spark-submit jobs/predict.py --model-file out/model.npz                 # the bundled digits test split
    spark-submit --master yarn --properties-file conf/spark-defaults.yarn-client.conf \\
        --archives dist/sparkdl-env.tar.gz#environment --py-files jobs/common.py \\
        jobs/predict.py --model-file hdfs:///models/cnn/model.npz --data hdfs:///data/new.parquet \\
        --output hdfs:///predictions/cnn.parquet

The Parquet output keeps the input columns except the features (unless --keep-features) and adds, for
classifiers, `probability` (array<float>) and `prediction` (int); other models get `prediction` (double, or
array<float> for several outputs). With a label column it also prints the accuracy.
Exit status: 0 on success, 2 with a one-line reason on bad arguments or data.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (beside this file; on YARN cluster mode ship it with --py-files jobs/common.py)

PROG = "jobs/predict.py"


def parse_args(argv=None):
    p, _, g = common.saved_model_parser(
        PROG, __doc__, f"a built-in dataset {common.BUILTIN_DATA} (its test split) or a Parquet/CSV/JSON/LibSVM/IDX "
        "path (local or any Hadoop URI); labels are optional", os.path.join("out", "predictions.parquet"),
        "Parquet output path")
    g.add_argument("--write-mode", default="overwrite", choices=["overwrite", "error", "append"],
                   help="what to do when --output exists")
    g.add_argument("--prediction-col", default="prediction")
    g.add_argument("--probability-col", default="probability")
    g.add_argument("--keep-features", action="store_true", help="keep the features column(s) in the output")
    common.add_master_arg(g)
    return common.parse_saved_model_args(p, argv)


def main(argv=None):
    args = parse_args(argv)
    common.check_input(args.data)
    model = common.load_model_file(args.model_file)
    from sparkdl.spark import SparkTrainer
    spark = common.spark_session(args.master, "sparkdl-predict")
    df, features_col = common.read_for_model(args, spark, model, need_labels=False)
    predictions = SparkTrainer(model).predict(df, features_col, args.prediction_col, args.probability_col,
                                              args.batch_size)
    if not args.keep_features:
        dropped = [features_col] if isinstance(features_col, str) else list(features_col)
        predictions = predictions.drop(*dropped)
    from sparkdl.spark.data import task_errors
    with task_errors():   # the rows are only read here: a bad one is found by a task
        predictions.write.mode(args.write_mode).parquet(args.output)
    written = spark.read.parquet(args.output)
    line = f"wrote {args.output}"
    if args.label_col in written.columns and getattr(model.loss, "kind", None) in ("multiclass", "binary"):
        row = written.selectExpr("count(*) AS n", f"avg(CAST(`{args.prediction_col}` = `{args.label_col}` AS DOUBLE)) "
                                 "AS accuracy").first()
        line += f": {row['n']} rows, accuracy against {args.label_col!r}: {row['accuracy']:.4f}"
    else:
        line += f": {written.count()} rows"
    print(line)
    common.stop_if_submitted(spark)
    return 0


if __name__ == "__main__":
    sys.exit(common.run(PROG, main))
