"""The fleet measurements (`make fleet-check`): systemd hosts with a CPU engine each (a
rolling upgrade under load; a model split over two hosts), more than the CI's 2 cores carry
beside the other suites. Collected only with VLLAMA_FLEET=1,
so `make test` neither runs nor skips it."""

from __future__ import annotations

import os

collect_ignore_glob = [] if os.environ.get("VLLAMA_FLEET") == "1" else ["test_*.py"]
