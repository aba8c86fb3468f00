"""Root conftest of a clone. The plugin itself loads through its `pytest11` entry point
(`pip install -e .`), so the suite runs the same from a clone and from an installed copy."""
