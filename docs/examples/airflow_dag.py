"""An Airflow DAG that runs docs/examples/daily_events.py once per logical date through the `mapreduce` CLI.

Copy it into your dags folder and set the four environment variables (or edit the defaults) on the
Airflow workers. Airflow renders ``{{ ds }}`` to the run's logical date (YYYY-MM-DD); the engine's
``{date}`` in --where then stands for that same date. Exit codes of `mapreduce run`: 0 committed or
nothing to do (a retry after a success is free), 1 failed (retried: --resume reuses the tasks the
failed attempt finished), 3 a --max-change gate tripped (not used here), 130/143 interrupted
(Airflow's SIGTERM on a timeout or a cleared task: the run unwinds and releases its lock).
"""

import datetime
import os
import shlex

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

MAPREDUCE = os.environ.get("MAPREDUCE_BIN", "mapreduce")                 # the CLI of the engine's venv
JOB = os.environ.get("DAILY_EVENTS_JOB", "/opt/pipelines/daily_events.py")
EVENTS = os.environ.get("DAILY_EVENTS_INPUT", "s3://data-lake/events/")
AGG = os.environ.get("DAILY_EVENTS_OUTPUT", "s3://data-lake/agg/daily_events/")

with DAG(
    dag_id="daily_events",
    schedule="@daily",
    start_date=datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc),
    catchup=False,                      # use `mapreduce backfill` for ranges of past dates
    max_active_runs=1,                  # one writer per output: the engine's lock refuses a second one
    default_args={"retries": 3, "retry_delay": datetime.timedelta(minutes=5),
                  "execution_timeout": datetime.timedelta(hours=2)},
) as dag:
    BashOperator(
        task_id="aggregate",
        bash_command=" ".join([
            shlex.quote(MAPREDUCE), "run", shlex.quote(JOB),
            "--input", shlex.quote(EVENTS), "--output", shlex.quote(AGG),
            "--partition-by", "day", "--mode", "overwrite-partitions",
            "--date", "{{ ds }}", "--where", shlex.quote("day = '{date}'"),
            "--resume", "--quiet",
        ]),
    )
