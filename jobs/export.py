"""Export a saved sparkdl model to another format (ONNX). Runs without Spark.

    python jobs/export.py --model-file out/model.npz --format onnx --output out/model.onnx
    python jobs/export.py --model-file hdfs:///models/cnn/model.npz --output hdfs:///models/cnn/model.onnx --opset 13

The ONNX file holds the model's inference graph (standard operators, float32, a dynamic batch dimension); see
sparkdl.io.onnx for how each layer maps. It needs the onnx package: pip install sparkdl[onnx].
Exit status: 0 on success, 2 with a one-line reason on bad arguments or an unexportable model.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (beside this file)

PROG = "jobs/export.py"
FORMATS = ("onnx",)
DEFAULT_OPSET = 17   # sparkdl.io.onnx.DEFAULT_OPSET, repeated so that --help needs no import


def parse_args(argv=None):
    p = common.Parser(PROG, __doc__)
    p.add_argument("--model-file", required=True, help="a model file written by jobs/train.py or model.save() "
                   "(local or any Hadoop URI)")
    p.add_argument("--format", default="onnx", choices=FORMATS, help="output format")
    p.add_argument("--output", required=True, help="output file (local or any Hadoop URI)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (13 or later)")
    p.add_argument("--input-name", default="input", help="graph input name (single-input models; a model with "
                   "several inputs keeps its own input names)")
    p.add_argument("--output-name", default="output", help="graph output name")
    return p.parse_args(argv)


def load_model(path):
    """A saved model from a local path or a Hadoop URI (several inputs allowed, unlike the Spark jobs)."""
    from sparkdl import fs, io
    common.check_input(path, "--model-file")
    try:
        with fs.open_input(path) as f:
            return io.load_model(f)
    except ValueError as e:
        raise common.JobError(f"--model-file {path!r}: {e}") from None


def main(argv=None):
    args = parse_args(argv)
    model = load_model(args.model_file)
    try:
        from sparkdl.io.onnx import export_onnx
        many = len(getattr(model, "input_names", [None])) > 1
        proto = export_onnx(model, None, opset=args.opset, input_name=None if many else args.input_name,
                            output_name=args.output_name)
    except ImportError as e:
        raise common.JobError(str(e)) from None
    common.write_bytes(args.output, proto.SerializeToString())
    print(f"wrote {args.output}: ONNX opset {args.opset}, {len(proto.graph.node)} nodes, "
          f"input {describe(proto.graph.input)}, output {describe(proto.graph.output)}")
    return 0


def describe(values):
    """'name' (batch, 28, 28, 1) for each graph input or output."""
    return ", ".join(f"{v.name!r} ({shape(v)})" for v in values)


def shape(value):
    return ", ".join(d.dim_param or str(d.dim_value) for d in value.type.tensor_type.shape.dim)


if __name__ == "__main__":
    sys.exit(common.run(PROG, main))
