"""``python -m modalrec.cli`` (the test suite's server fixture starts ``serve`` this way)."""

from modalrec.cli import main

main()
