"""Test-session settings, applied before any test module imports torch."""

import os

# OpenMP threads sleep while waiting instead of spinning (see the Makefile): subprocess tests
# and dataloader workers share the CPU cores with the test process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
