"""A helper for tests that wait for something another thread or process does."""
import time


def until(cond, timeout=5.0):
    """Whether ``cond()`` became true within ``timeout`` seconds (polled every 5 ms)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True
