"""A real control plane in the tests: the chart's identities on it (install), a loopback TCP proxy."""
