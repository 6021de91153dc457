"""What the consumers of run directories share to write reports: the report folder writer, metric labels, figures.

``experiments``, ``analysis`` and ``serve`` may not import each other (tests/test_layering.py); whatever more
than one of them needs to write a report lives here, above ``runs`` and below them.
"""
