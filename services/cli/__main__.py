"""``python -m services.cli`` is ``driftloop``: workers started by the demo use it."""

from services.cli import main

main()
