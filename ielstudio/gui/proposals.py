"""The model's proposal per image as the window holds them.

Final proposals (from the kept model) are written into the project by the job that
made them (`jobs.ScoreWriter`), so the window keeps only the recent ones in memory and
reads the others from the project when an image is shown: a reopened project shows its
proposals at once, and a 100,000-image project does not hold 100,000 masks in memory.
Previews (from a training snapshot, never stored) stay in memory until the final
proposal of the same image replaces them.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

RECENT = 64  # stored proposals kept in memory (the shown image and its neighbours)


class Proposals:
    """name -> proposal (class indices): `get`, `in`, `[]`, `put`, `clear`."""

    def __init__(self, recent: int = RECENT):
        self.recent = int(recent)
        self._unstored: dict[str, np.ndarray] = {}  # previews, or proposals with no project to hold them
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.project = None
        #: the `session.proposal_source` of the stored proposals that are valid now (None: none are)
        self.source: str | None = None

    def attach(self, project, source: str | None) -> None:
        """Read stored proposals from ``project``, those made by ``source`` only."""
        self.project, self.source = project, source
        self._cache.clear()

    def put(self, name: str, proposal: np.ndarray, stored: bool) -> None:
        """A new proposal; ``stored``: the project holds it already (final proposals)."""
        if stored and self.project is not None and self.source is not None:
            self._unstored.pop(name, None)
            self._cache[name] = proposal
            self._cache.move_to_end(name)
            while len(self._cache) > self.recent:
                self._cache.popitem(last=False)
        else:
            self._cache.pop(name, None)
            self._unstored[name] = proposal

    def get(self, name: str, default=None):
        if name in self._unstored:
            return self._unstored[name]
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        if self.project is None or self.source is None:
            return default
        try:
            found = self.project.proposal(name, self.source)
        except KeyError:
            found = None
        if found is None:
            return default
        self.put(name, found, stored=True)
        return found

    def reader(self):
        """``read(name) -> proposal or None`` for another thread: the proposals held in
        memory now (a snapshot), the stored ones read from the project (thread-safe),
        this object's cache left alone."""
        held = {**self._cache, **self._unstored}
        project, source = self.project, self.source

        def read(name: str):
            if name in held:
                return held[name]
            if project is None or source is None:
                return None
            try:
                return project.proposal(name, source)
            except KeyError:
                return None

        return read

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __getitem__(self, name: str) -> np.ndarray:
        found = self.get(name)
        if found is None:
            raise KeyError(name)
        return found

    def names(self) -> set[str]:
        """Every image with a proposal now (one query for the stored ones)."""
        stored = set(self.project.proposal_names(self.source)) if self.project is not None and self.source else set()
        return stored | set(self._unstored)

    def __iter__(self):
        return iter(sorted(self.names()))

    def __len__(self) -> int:
        return len(self.names())

    def clear(self) -> None:
        self._unstored.clear()
        self._cache.clear()
        self.project, self.source = None, None
