"""spark-submit entry point: evaluate a saved sparkdl model on a DataFrame, metrics computed on executors.

    spark-submit jobs/evaluate.py --model-file out/model.npz                # the bundled digits test split
    spark-submit --master yarn --properties-file conf/spark-defaults.yarn-client.conf \\
        --archives dist/sparkdl-env.tar.gz#environment --py-files jobs/common.py \\
        jobs/evaluate.py --model-file hdfs:///models/cnn/model.npz --data hdfs:///data/test.parquet \\
        --output hdfs:///models/cnn/evaluation.json

Writes the metrics as JSON to --output and prints them. Classifiers get accuracy, macro precision/recall/F1,
log-loss and the confusion matrix; regression models MSE, MAE and R^2 (or the --metrics you name).
Exit status: 0 on success, 2 with a one-line reason on bad arguments or data.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (beside this file; on YARN cluster mode ship it with --py-files jobs/common.py)

PROG = "jobs/evaluate.py"


def parse_args(argv=None):
    p, model, g = common.saved_model_parser(
        PROG, __doc__, f"a built-in dataset {common.BUILTIN_DATA} (its test split) or a Parquet/CSV/JSON/LibSVM/IDX "
        "path (local or any Hadoop URI)", os.path.join("out", "evaluation.json"), "metrics JSON path")
    model.add_argument("--metrics", default=None, help="comma-separated metric names (default: by the model's loss)")
    common.add_master_arg(g)
    return common.parse_saved_model_args(p, argv)


def main(argv=None):
    args = parse_args(argv)
    common.check_input(args.data)
    model = common.load_model_file(args.model_file, need_loss=True)
    if args.metrics:
        names = [m for m in args.metrics.split(",") if m]
    else:
        names = common.REGRESSION_METRICS if model.loss.kind == "regression" else common.CLASSIFIER_METRICS
    model.compile(model.optimizer, model.loss, list(names))
    from sparkdl.spark import SparkTrainer
    spark = common.spark_session(args.master, "sparkdl-evaluate")
    df, features_col = common.read_for_model(args, spark, model)
    metrics = SparkTrainer(model).evaluate(df, features_col, args.label_col, batch_size=args.batch_size)
    common.write_json(args.output, {"metrics": metrics, "model_file": args.model_file, "data": args.data})
    print("metrics:", common.format_metrics(metrics))
    print(f"wrote {args.output}")
    common.stop_if_submitted(spark)
    return 0


if __name__ == "__main__":
    sys.exit(common.run(PROG, main))
