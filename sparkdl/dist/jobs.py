"""mode="jobs" (Deeplearning4j's ParameterAveragingTrainingMaster): one Spark job per averaging round. The data
is exported once per fit into one shard per worker; each round ships the flat params (+ layer state, +
optimizer state) to every task, each task fits ``averaging_frequency`` minibatches of its shard and returns an
example-weighted Contribution, and the contributions are summed (Spark: a treeAggregate). Plain task retry
covers lost executors, and dynamic allocation is fine. This loop is Spark-free; the launcher runs the rounds."""
from .master import Master, register


@register
class Jobs(Master):
    mode = "jobs"

    def fit(self, options, run, launcher):
        run.mark("launched")
        with launcher.exported(run) as sizes:
            run.start(sizes)
            for epoch, r, g in run.rounds():
                run.apply(launcher.run_round(run, epoch, r, g), epoch, r, g)
                if run.stopped:
                    break
        return run.finish()
