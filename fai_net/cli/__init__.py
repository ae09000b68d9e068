"""The `fai` command line: `entry` builds the parser and dispatches; one module per command
group (node, registry, sim, telemetry); `wire_demo` is `fai demo`, one batch through the
wire path in one process (the devnet's main job is `fai devnet demo`).
"""
