import os

# Tiny models gain nothing from intra-op threads, and several torch processes (pytest,
# a worker subprocess) spinning OpenMP threads on 2 cores slow each other down badly.
os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = [
    "tests.fixtures.api",
    "tests.fixtures.models",
    "tests.fixtures.services",
    "tests.fixtures.live",
]
