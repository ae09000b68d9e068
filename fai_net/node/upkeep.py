"""The node's housekeeping loops: metrics, pruning the batch store, recall calibration.

None of them is on a batch's path; each one catches its own failures, because a store or
library hiccup in housekeeping must never take the node down.
"""

from __future__ import annotations

import logging

import trio

from fai_core.clock import now_ms
from fai_net.api.recall import CALIBRATION_TTL_S
from fai_net.node.resources import NodeResources
from fai_net.node.state import NodeState, read_library_sizes
from fai_net.node.status import NodeStatus

#: Every part logs as the node always has (the CLI's log lines name the logger).
log = logging.getLogger("fai_net.node.node")

#: Stored batches are kept this long beyond the repair window, so that an equivocation
#: on a batch repair may still deliver is always caught against the stored first one.
PRUNE_MARGIN_MS = 24 * 3_600_000


class Upkeep:
    def __init__(self, res: NodeResources, state: NodeState, status: NodeStatus) -> None:
        self.res, self.state, self.status = res, state, status

    async def metrics_loop(self) -> None:
        res = self.res
        while True:
            self.state.library_sizes = await trio.to_thread.run_sync(
                read_library_sizes, res.library, limiter=self.state.lib_limiter
            )
            await self.status.refresh_metrics()
            res.reputation.save()  # the gate's penalties must survive a SIGKILL too
            await trio.sleep(10.0)

    async def prune_loop(self) -> None:
        """Delete stored batches older than anything the gate may still accept (the repair
        window) plus a margin, so an equivocation is always caught against the first batch
        while repair can deliver the second. Unmerged batches are kept, and so is every
        baseline block a kept batch names (repair serves both); the store drops a block once
        no batch names it and it is as old as the batches pruned (`BatchStore.prune`)."""
        cfg = self.res.config
        keep_ms = cfg.repair_max_age_ms + cfg.max_age_ms + PRUNE_MARGIN_MS
        while True:
            await trio.sleep(cfg.prune_interval_s)
            try:
                removed = self.res.store.prune(now_ms() - keep_ms)
            except Exception:  # a store hiccup must not stop the node
                log.exception("prune failed")
                continue
            if removed:
                log.info("pruned %d stored batches older than %d h", removed, keep_ms // 3_600_000)

    async def calibration_loop(self) -> None:
        """Recall ranks quality claims within their source; the ranks are rebuilt here,
        off the recall path, when the library has changed."""
        while True:
            await trio.sleep(CALIBRATION_TTL_S)
            try:
                await trio.to_thread.run_sync(self.res.recaller.refresh_calibration)
            except Exception:  # a library read error must not take the node down
                log.exception("quality calibration refresh failed; recall keeps the last")
