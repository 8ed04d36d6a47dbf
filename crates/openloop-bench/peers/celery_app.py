"""The Celery peer: one `echo` task, Redis as broker and result backend.

The worker is started by openloop-bench (`python -m celery -A celery_app worker
--concurrency 2 --pool prefork`) with PEER_REDIS_URL pointing at its own Redis.
"""

import os

from celery import Celery

redis_url = os.environ["PEER_REDIS_URL"]
app = Celery("peer", broker=redis_url, backend=redis_url)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task
def echo(text: str) -> str:
    return text
