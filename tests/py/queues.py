"""RQ (with redis-py 5), redis-py's Lock and the `limits` moving-window rate limiter through
respite: jobs enqueued, run by a worker, their results read back; a lock taken, extended,
refused to a second holder and released; a limit of 3 a minute letting 3 hits through and
refusing the 4th (the Lock and the limiter run Lua scripts for all of it). Exits 0 when all
of it worked.

    python queues.py <port> <tenant> <password>
"""
import sys

import redis
from limits import parse, storage, strategies
from rq import Queue, SimpleWorker
from rq.job import JobStatus

from rqjobs import double


def main():
    port, tenant, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    conn = redis.Redis(host="127.0.0.1", port=port, username=tenant, password=password)
    queue = Queue("default", connection=conn)
    jobs = [queue.enqueue(double, n) for n in (1, 2, 21)]
    SimpleWorker([queue], connection=conn).work(burst=True)
    results = []
    for job in jobs:
        job.refresh()
        assert job.get_status() == JobStatus.FINISHED, (job.id, job.get_status(), job.exc_info)
        results.append(job.return_value())
    assert results == [2, 4, 42], results

    lock = conn.lock("resource", timeout=10)
    assert lock.acquire(blocking=False)
    assert not conn.lock("resource", timeout=10).acquire(blocking=False)
    assert lock.extend(5)
    assert lock.owned()
    lock.release()
    assert conn.lock("resource", timeout=10).acquire(blocking=False)
    limiter = strategies.MovingWindowRateLimiter(
        storage.RedisStorage(f"redis://{tenant}:{password}@127.0.0.1:{port}")
    )
    three = parse("3/minute")
    hits = [limiter.hit(three, "api", "user1") for _ in range(4)]
    assert hits == [True, True, True, False], hits
    print({"results": results, "lock": "ok", "limits": hits})


if __name__ == "__main__":
    main()
