"""``python -m derd_scale SUBCOMMAND …``: the ``derd-scale`` command without its console script."""

import sys

from derd_scale.cli import main

sys.exit(main())
