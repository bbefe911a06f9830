import os

# Tiny models gain nothing from intra-op threads, and several torch processes (pytest,
# a worker subprocess) spinning OpenMP threads on 2 cores slow each other down badly.
os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = [
    "tests.fixtures.api",
    "tests.fixtures.models",
    "tests.fixtures.services",
    "tests.fixtures.live",
    "tests.fixtures.hostile",  # after services: it imports them
]


def pytest_addoption(parser):
    parser.addoption(
        "--soak",
        action="store_true",
        help="fault suite: many more trials (the same as OBLIVIATE_SOAK=1); for manual runs",
    )


def pytest_configure(config):
    if config.getoption("--soak"):
        os.environ["OBLIVIATE_SOAK"] = "1"
