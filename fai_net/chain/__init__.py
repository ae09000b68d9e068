"""Local chain processes (Anvil) for tests and the devnet."""
