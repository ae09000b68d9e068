"""The fleet simulator: FAI's real batch, filter and merge code on a simulated network."""
