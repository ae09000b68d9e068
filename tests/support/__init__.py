"""What the tests share: real node processes and fleets (`fleet`), the devnet CLI runner
(`devnet`), signed test batches (`net`, `wire`), library checks (`library`) and an
independent Ed25519 reference (`ed25519ref`). Imported as `tests.support.<module>`; pytest
puts the repository root on sys.path (`pythonpath` in pyproject.toml).
"""
