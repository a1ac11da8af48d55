"""funnelfox-enricher: FunnelFox sessions fetched, validated, enriched and delivered.

The data's path, one module each: ids → fetch → validate (models) → enrich → payload → sinks,
wired by pipeline (plain async code) and carried by tasks (Celery).
"""
