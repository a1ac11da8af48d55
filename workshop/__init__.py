"""Fake FunnelFox API and webhook receiver for the demo, the fault tests and the benchmark."""
