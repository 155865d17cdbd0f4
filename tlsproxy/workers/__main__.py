"""``python -m tlsproxy.workers ARGS``: one worker, started by a ``--workers`` supervisor."""

from __future__ import annotations

import os
import sys

from tlsproxy.workers.worker import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
