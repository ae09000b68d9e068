"""FAI core: pure, synchronous, deterministic logic (no networking, no chain)."""
