"""Progress of a fit: a tqdm bar per epoch (examples done, examples/s, time left, loss) where someone watches (a
terminal, or a notebook, where tqdm's auto front end draws a widget), one line per epoch elsewhere (logs)."""
import sys
import time


def _interactive(stream):
    if getattr(stream, "isatty", lambda: False)():
        return True
    # a notebook or a Jupyter console, where tqdm.auto draws a widget: an IPython shell with a kernel (that
    # ipykernel is imported says nothing: plotly and others import it in plain scripts too)
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return getattr(shell, "kernel", None) is not None and stream in (sys.stdout, sys.stderr)


class Progress:
    """``verbose``: 0 silent, 1 a bar, 2 one line per epoch, "auto" a bar where someone watches."""

    def __init__(self, total, verbose="auto", stream=None, every=0.2):
        self.stream = stream or sys.stdout
        if verbose == "auto":
            verbose = 1 if _interactive(self.stream) else 2
        self.verbose, self.total, self.every = verbose, total, every
        self.bar = None

    def start(self, title):
        self.title, self.t0, self.last = title, time.perf_counter(), 0.0
        if self.verbose == 1:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.total, desc=title, unit="ex", unit_scale=True, file=self.stream, leave=True,
                            mininterval=self.every, dynamic_ncols=True)

    def update(self, done, values, force=False):
        """``done`` examples so far in the epoch; ``values()`` the numbers to show (called only when drawn)."""
        bar = self.bar
        if bar is None:
            return
        now = time.perf_counter()
        if force or now - self.last >= self.every:
            self.last = now
            bar.set_description_str(self.title, refresh=False)
            bar.set_postfix({k: f"{v:.4f}" for k, v in values().items()}, refresh=False)
        bar.update(done - bar.n)   # tqdm draws at most every ``every`` seconds

    def end(self, done, logs):
        if self.verbose == 0:
            return
        elapsed = time.perf_counter() - self.t0
        numbers = {k: v for k, v in logs.items() if isinstance(v, float)}
        if self.bar is not None:
            self.bar.set_description_str(self.title, refresh=False)
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in numbers.items()}, refresh=False)
            self.bar.update(done - self.bar.n)
            self.bar.close()
            self.bar = None
            return
        text = " - ".join(f"{k}: {v:.4f}" for k, v in numbers.items())
        self.stream.write(f"{self.title} {done}/{self.total} - {elapsed:.1f}s - {done / max(elapsed, 1e-9):,.0f} "
                          f"ex/s - {text}\n")
        self.stream.flush()
