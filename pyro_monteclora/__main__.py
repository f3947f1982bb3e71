"""``python -m pyro_monteclora`` is the ``pyro-monteclora`` command."""

from .cli import console_main

console_main()
