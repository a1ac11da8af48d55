"""Deployment files (Prometheus rules, Grafana dashboard) and the helpers that check them."""
