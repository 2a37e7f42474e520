"""Ready-made jobs. Each module defines a module-level ``job`` and fits on a screen.

Run one with ``mapreduce run jobs/wordcount.py --input IN --output OUT`` or from Python:
``from jobs.wordcount import job; job.run(IN, OUT)``.
"""

import os

SAMPLE_DATA = os.path.join(os.path.dirname(__file__), "data")
