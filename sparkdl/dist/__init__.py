"""The distributed runtime, Spark-free: the round protocol (schedule, averaging, the driver's FitRun), the
masters, and the communicators (shared memory within a host, TCP between hosts). sparkdl.spark launches it."""
