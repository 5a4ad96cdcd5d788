"""The running top-K of a screen: memory bounded by K, however long the input."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class TopK:
    """The running best K rows, ordered by (score, input row number), with an optional
    cap of rows per chemical system and an optional one row per reduced composition.

    Candidates are tables with the helper columns ``_score`` and ``_row`` (and ``_system``,
    ``_comp`` when a cap is on). A row turned away by a cap is worse than the rows that
    filled its place, so it can never come back: applying the caps greedily per batch
    equals applying them once to the fully sorted input. A row number already held is
    refused, so offering a batch twice (a resume that replays one) changes nothing."""

    def __init__(self, k: int, per_system: int | None = None, unique: bool = False):
        self.k, self.per_system, self.unique = k, per_system, unique
        self.table: pa.Table | None = None
        self.schema: pa.Schema | None = None

    @property
    def cutoff(self) -> float:
        """Score of the K-th row (inf until K rows are held): a row scoring above it cannot enter."""
        if self.table is None or self.table.num_rows < self.k:
            return np.inf
        return float(self.table.column("_score")[self.table.num_rows - 1].as_py())

    def offer(self, cand: pa.Table) -> None:
        self.schema = self.schema or cand.schema
        cutoff = self.cutoff
        if cutoff < np.inf:  # only rows that can enter (ties may still win on row order)
            cand = cand.filter(pc.less_equal(cand.column("_score"), cutoff))
        if self.table is not None and cand.num_rows:
            cand = cand.filter(pc.invert(pc.is_in(cand.column("_row"), value_set=self.table.column("_row"))))
        if cand.num_rows == 0:
            return
        t = cand if self.table is None else pa.concat_tables([self.table, cand])
        order = np.lexsort((t.column("_row").to_numpy(), t.column("_score").to_numpy()))
        if self.per_system is not None or self.unique:
            order = order[self._admit(t, order)]
        self.table = t.take(pa.array(order[: self.k]))

    def _admit(self, t: pa.Table, order: np.ndarray) -> np.ndarray:
        """Mask over ``order``: the rows the caps let in, walking best first."""
        systems = t.column("_system").to_numpy(zero_copy_only=False)[order] if self.per_system else None
        comps = t.column("_comp").to_numpy(zero_copy_only=False)[order] if self.unique else None
        per_system: dict = {}
        comps_taken: set = set()
        keep = np.zeros(len(order), dtype=bool)
        n = 0
        for j in range(len(order)):
            if comps is not None and comps[j] in comps_taken:
                continue
            if systems is not None and per_system.get(systems[j], 0) >= self.per_system:
                continue
            if comps is not None:
                comps_taken.add(comps[j])
            if systems is not None:
                per_system[systems[j]] = per_system.get(systems[j], 0) + 1
            keep[j] = True
            n += 1
            if n == self.k:
                break
        return keep
