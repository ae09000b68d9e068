"""Evaluation: the attacks, the acceptance scenario and the fleet simulator.

Pure and synchronous like fai_core, and kept apart from it so that what a node runs
(fai_core, fai_net) never carries attack code: tests/test_layout.py enforces that neither
imports this package.
"""
