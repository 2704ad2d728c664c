"""Distributed training and evaluation of PIUnet on PROBA-V scenes."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("piunet-dist")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "unknown"
