"""The HTTP ingress: FunnelFox webhooks in, ``enrich_batch`` tasks out (the ``web:`` process).

events.py     the webhook envelope and the trigger it becomes
body.py       reading a request body under a byte limit
markers.py    the per-event dedupe markers in Redis
coalesce.py   events accepted together, published as one message
service.py    the Starlette app: routes and their answers
openapi.py    the served OpenAPI document (kept in ``schemas/``)
app.py        ``uvicorn worker.ingress.app:app``

Its settings (INGRESS_*) are ``config/ingress.py``; it publishes through ``worker/producer.py``.
"""
