"""``python -m repas`` runs the CLI."""

import sys

from repas.cli import main

sys.exit(main())
