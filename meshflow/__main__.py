"""``python -m meshflow``: the same as the ``meshflow`` command."""

from meshflow.cli import main

main()
