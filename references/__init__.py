"""The straightforward PIUnet and its losses and metrics, which the tests and benchmarks compare with."""
