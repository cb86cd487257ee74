"""Progress of the long jobs (tokenizing, scoring): a tqdm bar with the time left on a terminal; where
stderr is not one (a log), plain lines instead, so a long job is never silent there either."""
import sys
import time

from tqdm import tqdm

LINE_SECONDS = 30  # in a log: a line at most this often


def progress(**kwargs) -> tqdm:
    """A tqdm bar on a terminal; silent when stderr is not one (logs get plain lines instead)."""
    return tqdm(disable=not sys.stderr.isatty(), **kwargs)


class Progress:
    """`total` units of work done in steps (update(n)): a bar on a terminal, else a line to stdout every
    LINE_SECONDS with the units done, their rate and the time left."""

    def __init__(self, desc: str, total: int, unit: str):
        self.desc, self.total, self.unit = desc, total, unit
        self.bar = progress(desc=desc, total=total, unit=unit, unit_scale=True)
        self.done, self.start = 0, time.time()
        self.last_line = self.start

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        now = time.time()
        if self.bar.disable and now - self.last_line >= LINE_SECONDS:
            rate = self.done / (now - self.start)
            print(f"  {self.desc}: {self.done:,} of {self.total:,} {self.unit} ({rate:,.0f} {self.unit}/s, "
                  f"about {(self.total - self.done) / max(rate, 1e-9):,.0f} s left)", flush=True)
            self.last_line = now

    def close(self) -> None:
        self.bar.close()
