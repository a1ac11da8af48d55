"""The operator console: ``python -m worker enqueue | dlq | status | backfill``."""
