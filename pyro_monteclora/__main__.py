"""``python -m pyro_monteclora`` is the ``pyro-monteclora`` command."""

from pyro_monteclora.cli import console_main

console_main()
