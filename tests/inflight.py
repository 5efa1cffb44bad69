"""An engine wrapper for tests of the runner's window: the most rows and sequences it held at once."""

from __future__ import annotations


class PeakInFlight:
    """Wraps an engine (the real one or the instant one) and records the most rows in flight (the engine's own
    count) and the most sequences (each row's sampling.n: vLLM runs every completion as its own sequence)."""

    def __init__(self, engine):
        self.engine, self.info = engine, engine.info
        self.peak_rows = self.peak_seqs = self._seqs = 0
        self._n: dict[str, int] = {}

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def add(self, req):
        error = self.engine.add(req)
        if error is None:
            self._n[req.key] = req.sampling.n
            self._seqs += req.sampling.n
            self.peak_seqs = max(self.peak_seqs, self._seqs)
        self.peak_rows = max(self.peak_rows, self.engine.in_flight())
        return error

    def step(self):
        done = self.engine.step()
        self._seqs -= sum(self._n.pop(c.key, 0) for c in done)
        return done
