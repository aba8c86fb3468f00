"""The behavioural suite that `pytest --model PATH` runs.

Installed as pytest_misalignment.model_tests.
"""
