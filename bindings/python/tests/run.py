"""Runs the Python suite with Debian's pytest; exit 77 (meson's skip) if it is missing."""
import sys

try:
    import pytest
except ImportError:
    print("SKIPPED: python3-pytest is not installed (scripts/install-deps.sh installs it)")
    sys.exit(77)

sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
