"""TeraSort: order 100-byte records (10-byte key, 90-byte payload) globally by key.

The sort round samples keys from every map task, picks range boundaries, and each reducer merges
the sorted runs of one key range, so the output files, read in order, are one sorted sequence.

    mapreduce run jobs/terasort.py --input RECORDS --output out/sorted
"""

from engine import Job

job = Job("terasort").sort(by="key")
