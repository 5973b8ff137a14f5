"""A streaming gRPC gateway for asynchronous inference.

Data flow: faces (gRPC in ``gateway.api``, HTTP in ``gateway.http``) -> the job service
(``gateway.service``: state machine, idempotency, retention) -> the store (``gateway.store``) and the
event hub (``gateway.hub``) -> route runners (``gateway.work``: work queues + workers, meeting the
service through ``gateway.lifecycle``) -> backends (``gateway.backends``: echo, whisper, octoai).
"""

__version__ = "0.1.0"
