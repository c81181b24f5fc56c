"""``python -m vecdb.ingest``."""

import sys

from vecdb.ingest.cli import main

sys.exit(main())
