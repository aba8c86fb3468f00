"""Results: the run document and its verdict, snapshots, and the HTML, Markdown and compare
views. Everything here reads the JSON document only. Imports without pytest."""


def __getattr__(name: str) -> object:
    """0.1's `pytest_misalignment.results` module is `results.document` now (one release)."""
    from .._moved import old_name

    if name == "ResultsCollector":  # renamed too: document's own warning names TestRecords
        from . import document

        return document.ResultsCollector
    return old_name("results", "document", name)
