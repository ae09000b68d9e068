"""Agent telemetry into the node: the OTLP receiver, the durable spool, the extraction
passes over it, and the tracing processor an OpenAI Agents SDK agent installs.
"""
