"""``python -m cli``: the same as the ``meshflow`` command."""

from cli import main

main()
