"""The installed version of the project, recorded in checkpoints and evaluations."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("piunet-dist")
except PackageNotFoundError:  # run from a checkout that was never installed
    VERSION = "unknown"
