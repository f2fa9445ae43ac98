"""``python -m procpool_kafka.cli``: the same command as ``procpool-kafka``."""

import sys

from procpool_kafka.cli.main import main

sys.exit(main())
