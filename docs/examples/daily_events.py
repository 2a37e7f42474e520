"""Events per day and region: the job the scheduling examples run once per logical date.

Input: Hive-partitioned events, ``events/day=YYYY-MM-DD/*.parquet`` with columns ``region`` and ``v``.
Output: ``agg/day=YYYY-MM-DD/part-….parquet`` with ``region``, ``n`` (events) and ``total`` (sum of ``v``).

    mapreduce run docs/examples/daily_events.py --input events/ --output agg/ --partition-by day \\
        --mode overwrite-partitions --date 2026-11-30 --where "day = '{date}'"
"""

from engine import Job, agg

job = Job("daily_events").reduce(by=["day", "region"], aggs={"n": agg.count(), "total": agg.sum("v")})
