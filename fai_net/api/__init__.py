"""What agents and operators talk to: the control socket, the Python client, the MCP
server, recall and feedback, and the Prometheus metrics.

`client` is the public Python API; it imports nothing heavy so an agent's process pays
little for it.
"""
