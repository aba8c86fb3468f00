"""Jinja templates of the report (installed as pytest_misalignment.reports).

Generated reports go to reports/out/, which git ignores.
"""
