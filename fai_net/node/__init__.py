"""The node: one trio process that owns a library, a batch store and a libp2p host, with
its settings, its key, its own sequence numbers and the queue of batches waiting to merge.

Import `fai_net.node.node.Node` explicitly: this package's `__init__` stays empty so that
reading a setting (`fai_net.node.config`) does not load libp2p and LanceDB.
"""
