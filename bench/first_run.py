"""What `make run` spends its worker time on: the same spark-submit command as `make run` (local[2], the bundled
digits, OPENBLAS_NUM_THREADS as the Makefile exports it), repeated, its figures read from OUTPUT_DIR/stats.json:
worker time fitting, the rounds' wall time, the median fitting time per step, the held-out accuracy.

With several --trees (checkouts of sparkdl, e.g. `git worktree add /tmp/before HEAD~1`) the runs alternate
between them, each run started from its tree's directory so that Spark's Python workers import that tree.

    python bench/first_run.py [--repeats 5] [--trees DIR,DIR] [-- jobs/train.py arguments]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_once(tree, args):
    python = os.path.join(ROOT, ".venv", "bin", "python") if os.path.exists(os.path.join(ROOT, ".venv")) \
        else sys.executable
    submit = os.path.join(os.path.dirname(python), "spark-submit")
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "PYTHONPATH": tree, "PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python,
               "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "2")}
        r = subprocess.run([submit, "--master", "local[2]", "--driver-java-options",
                            "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC", os.path.join(tree, "jobs", "train.py"),
                            "--output-dir", out, *args], cwd=tree, env=env, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"{tree}: jobs/train.py failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        with open(os.path.join(out, "stats.json")) as f:
            stats = json.load(f)
    s = stats["summary"]
    steps = statistics.median(w["fit_s"] / w["steps"] for w in stats["workers"] if w.get("steps"))
    acc = re.search(r"held-out: .*accuracy: ([0-9.]+)", r.stdout)
    return {"fitting": s["fit_fraction"], "rounds_s": s["wall_s"], "rounds": s["rounds"], "step_ms": 1000 * steps,
            "accuracy": float(acc.group(1)) if acc else None, "mode": stats["config"].get("mode")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--trees", default=ROOT, help="comma-separated sparkdl checkouts (default: this one)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="after --: arguments for jobs/train.py")
    a = p.parse_args(argv)
    trees = [os.path.abspath(t) for t in a.trees.split(",")]
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    results = {t: [] for t in trees}
    for _ in range(a.repeats):
        for t in trees:
            r = run_once(t, args)
            results[t].append(r)
            print(f"{t}: {r['mode']}, fitting {100 * r['fitting']:.1f}%, rounds {1000 * r['rounds_s']:,.1f} ms "
                  f"({r['rounds']}), {r['step_ms']:.2f} ms/step, held-out accuracy {r['accuracy']}", flush=True)
    for t, rs in results.items():
        print(f"{t}: median fitting {100 * statistics.median(r['fitting'] for r in rs):.1f}%, median rounds "
              f"{1000 * statistics.median(r['rounds_s'] for r in rs):,.1f} ms over {len(rs)} runs")


if __name__ == "__main__":
    main()
