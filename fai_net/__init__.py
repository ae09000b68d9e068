"""FAI node: libp2p host, gossip topics, registry client, agent tools, command line."""
