"""Importers: the traces real agents already emit, turned into FAI's tool telemetry.

One module per format (`otlp`, `claude_code`, `openai_agents`), all built on `common`
(records without user text, one reward rule, domains and names) and read by
`detect` when the format is not given. docs/telemetry.md documents each format.
"""
