"""A local devnet: Anvil, the token and registry contracts, N registered node processes,
and the main job (`fai devnet demo`) that runs on it.
"""
