"""Stopping a fit on a signal: ``stop_on_signals`` turns SIGINT and SIGTERM into a request to stop the driver's
FitRun (sparkdl.dist.run), which cancels what runs through the masters' ``stoppers``, in a thread of its own, and
says where the fit stopped (a FitInterrupted); FitRun takes these methods from ``Stoppable``."""
import contextlib
import logging
import signal
import threading

from ..errors import FitInterrupted

log = logging.getLogger("sparkdl")


class Stoppable:
    """The stopping part of FitRun, which sets ``stop_signal`` (None) and ``stoppers`` (a list) and holds the
    ``epochs``, ``rounds_per_epoch``, ``resume_round``, ``next_round`` and ``synced`` read here."""

    def request_stop(self, name):
        """Stop the fit (from a signal handler): what runs is cancelled by the masters' ``stoppers``, in a thread
        of their own (they may talk to Spark, which the interrupted thread may be doing), and the round loop stops
        before its next round."""
        if self.stop_signal is not None:
            return
        self.stop_signal = name

        def stop():
            for stopper in list(self.stoppers):
                try:
                    stopper()
                except Exception as e:   # stopping what already ended
                    log.debug("sparkdl: stopping: %s", e)
        threading.Thread(target=stop, name="sparkdl-stop", daemon=True).start()

    def check_stop(self):
        if self.stop_signal is not None:
            raise self.interrupted()

    def interrupted(self):
        """The FitInterrupted that says where the fit stopped."""
        if self.rounds_per_epoch is None:   # before the schedule was settled (the data was being prepared)
            return FitInterrupted(self.stop_signal, 0, 0, 0, self.synced + 1)
        g = max(self.next_round - 1, self.resume_round)   # the round running (or about to)
        return FitInterrupted(self.stop_signal, g // self.rounds_per_epoch + 1, g + 1,
                              self.epochs * self.rounds_per_epoch, self.synced + 1)


@contextlib.contextmanager
def stop_on_signals(run, signals=(signal.SIGINT, signal.SIGTERM)):
    """While the block runs (in the main thread), SIGINT (Ctrl-C) and SIGTERM stop ``run`` instead of killing the
    process or raising inside a Spark call: its jobs are cancelled, its workers aborted, and the caller raises
    ``run.interrupted()`` once they have ended. The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in signals}

    def handler(signum, frame):
        run.request_stop(signal.Signals(signum).name)

    for s in signals:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
