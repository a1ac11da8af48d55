"""The HTTP ingress: FunnelFox webhooks in, ``enrich_session`` tasks out (the ``web:`` process).

settings.py   INGRESS_* variables, resolved once into an IngressConfig
events.py     the webhook envelope and the trigger it becomes
body.py       reading a request body under a byte limit
markers.py    the per-event dedupe markers in Redis
producer.py   publishing tasks to the broker, bounded in time
service.py    the Starlette app: routes and their answers
openapi.py    the served OpenAPI document (kept in ``schemas/``)
app.py        ``uvicorn worker.ingress.app:app``
"""
