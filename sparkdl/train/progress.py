"""A one-line progress bar for terminals (epoch, step, loss, examples/s); a line per epoch elsewhere."""
import sys
import time


class Progress:
    def __init__(self, total, verbose="auto", stream=None, every=0.2):
        self.stream = stream or sys.stdout
        if verbose == "auto":
            verbose = 1 if getattr(self.stream, "isatty", lambda: False)() else 2
        self.verbose, self.total, self.every = verbose, total, every

    def start(self, title):
        self.title, self.t0, self.last = title, time.perf_counter(), 0.0

    def update(self, done, values, force=False):
        if self.verbose != 1:
            return
        now = time.perf_counter()
        if not force and now - self.last < self.every:
            return
        self.last = now
        width = 24
        filled = width * done // max(self.total, 1)
        rate = done / max(now - self.t0, 1e-9)
        text = " - ".join(f"{k}: {v:.4f}" for k, v in values().items())
        self.stream.write(f"\r{self.title} [{'=' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                          f"- {rate:,.0f} ex/s - {text}")
        self.stream.flush()

    def end(self, done, logs):
        if self.verbose == 0:
            return
        elapsed = time.perf_counter() - self.t0
        text = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items() if isinstance(v, float))
        prefix = "\r" if self.verbose == 1 else ""
        self.stream.write(f"{prefix}{self.title} {done}/{self.total} - {elapsed:.1f}s "
                          f"- {done / max(elapsed, 1e-9):,.0f} ex/s - {text}\n")
        self.stream.flush()
