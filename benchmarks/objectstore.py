"""What a hash shuffle costs on an object store: requests, bytes, dollars and time, per maps x reducers.

    python -m benchmarks replay --shuffle 10000x10000 [--map-bytes 128MiB] [--slots 8,64,512]
    python -m benchmarks.objectstore 10000x10000 [--map-bytes 128MiB] [--prefixes 1]

The counts follow how ``engine.shuffle`` lays out a hash round's map outputs (checked against a moto
S3 server's request log in ``tests/test_replay.py``):

* every map task writes **one** Arrow IPC file: one PUT, or a multipart upload when the file is
  larger than the writer's block size (s3fs: 50 MiB): CreateMultipartUpload, one UploadPart per
  block, CompleteMultipartUpload;
* every reducer fetches, from every map file that holds rows of its partitions, the byte range of
  its batches: one ranged GET per spill of the map task (a spill writes every partition's batches
  once, a reducer's contiguous partitions next to each other; ranges less than 16 KiB apart are
  merged), so a dense shuffle issues ``maps x reducers x spills`` GETs and reads each byte once;
* after the round, each map file is deleted (one DeleteObjects each), and the run removes its
  shuffle prefix at the end (a few LISTs and HEADs).

Prices and limits are parameters (:class:`Store`); the defaults are S3 Standard's published figures in
us-east-1: $0.005 per 1,000 PUT, COPY, POST or LIST requests and $0.0004 per 1,000 GET or HEAD
requests (DELETE is free); 3,500 PUT/COPY/POST/DELETE and 5,500 GET/HEAD requests per second per
partitioned prefix; 100-200 ms first-byte latency for small requests and about 85-90 MB/s per
connection (AWS's performance guidelines). Every map file of a run shares one prefix
(``<shuffle dir>/<run id>/``), so unless S3 has split that prefix the GET rate limit applies to the
whole shuffle.

Time is the larger of two floors: the request-rate floor (requests / (rate x prefixes)) and the
latency floor (each reducer issues its GETs ``connections`` at a time, ``slots`` reducers at once).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass

MiB = 1 << 20


@dataclass(frozen=True)
class Store:
    """An object store's prices and limits (defaults: S3 Standard, us-east-1)."""

    name: str = "S3 Standard (us-east-1)"
    put_per_1000: float = 0.005          # PUT, COPY, POST, LIST
    get_per_1000: float = 0.0004         # GET, SELECT, HEAD
    put_rate: float = 3500.0             # PUT/COPY/POST/DELETE per second per prefix
    get_rate: float = 5500.0             # GET/HEAD per second per prefix
    first_byte: float = 0.1              # seconds until the first byte of a small GET
    bandwidth: float = 85e6              # bytes per second per connection
    block_size: int = 50 * MiB           # the writer's multipart block (s3fs's default)


@dataclass(frozen=True)
class Requests:
    """The requests and bytes of one hash shuffle."""

    maps: int
    reducers: int
    puts: int              # PutObject, CreateMultipartUpload, UploadPart, CompleteMultipartUpload
    gets: int              # ranged GETs
    deletes: int           # DeleteObjects, one per map file
    lists: int
    heads: int
    bytes_written: int
    bytes_read: int

    @property
    def billed_puts(self) -> int:
        return self.puts + self.lists


# What removing the run's (by then empty) shuffle prefix costs: s3fs's recursive rm, as observed.
CLEANUP_LISTS = 3
CLEANUP_HEADS = 2


def shuffle_requests(maps: int, reducers: int, map_bytes: int, *, spills: int = 1,
                     store: Store = Store()) -> Requests:
    """The requests of a dense hash shuffle (every map file holds rows for every reducer)."""
    if maps < 1 or reducers < 1 or spills < 1:
        raise ValueError(f"maps, reducers and spills must be at least 1, got {maps}, {reducers}, {spills}")
    parts = max(1, math.ceil(map_bytes / store.block_size))
    puts_per_map = 1 if map_bytes <= store.block_size else parts + 2
    return Requests(maps, reducers, puts=maps * puts_per_map, gets=maps * reducers * spills, deletes=maps,
                    lists=CLEANUP_LISTS, heads=CLEANUP_HEADS, bytes_written=maps * map_bytes,
                    bytes_read=maps * map_bytes)


def price(req: Requests, store: Store = Store(), *, slots: int = 512, connections: int = 10,
          prefixes: int = 1) -> dict:
    """Dollars and seconds of a shuffle's requests: ``{"dollars", "write_s", "read_s", ...}``."""
    dollars = (req.billed_puts * store.put_per_1000 + (req.gets + req.heads) * store.get_per_1000) / 1000
    gets_per_reducer = req.gets / req.reducers
    bytes_per_reducer = req.bytes_read / req.reducers
    waves = math.ceil(req.reducers / slots)
    latency_floor = waves * (math.ceil(gets_per_reducer / connections) * store.first_byte
                             + bytes_per_reducer / (connections * store.bandwidth))
    rate_floor = req.gets / (store.get_rate * prefixes)
    put_floor = req.puts / (store.put_rate * prefixes)
    return {"dollars": dollars, "read_s": max(latency_floor, rate_floor), "read_rate_floor_s": rate_floor,
            "read_latency_floor_s": latency_floor, "write_rate_floor_s": put_floor,
            "bytes_per_get": req.bytes_read / req.gets, "store": asdict(store), "slots": slots,
            "connections": connections, "prefixes": prefixes}


def _size(text: str) -> int:
    from dask.utils import parse_bytes
    return int(parse_bytes(text))


def _hours(s: float) -> str:
    return f"{s:,.0f} s ({s / 3600:.1f} h)" if s >= 3600 else f"{s:,.1f} s"


def render(maps: int, reducers: int, map_bytes: int, slots: list[int], *, spills: int = 1, prefixes: int = 1,
           connections: int = 10, store: Store = Store()) -> str:
    req = shuffle_requests(maps, reducers, map_bytes, spills=spills, store=store)
    lines = [f"Hash shuffle of {maps:,} maps x {reducers:,} reducers, {map_bytes / MiB:,.0f} MiB per map file "
             f"({req.bytes_written / 2**40:,.2f} TiB), {spills} spill(s) per map, on {store.name}, "
             f"{prefixes} prefix(es):",
             f"  requests: {req.puts:,} PUT/POST (writes), {req.gets:,} ranged GET, {req.deletes:,} DeleteObjects, "
             f"{req.lists} LIST, {req.heads} HEAD; {req.bytes_read / req.gets / 1024:,.1f} KiB per GET",
             "", "| slots | dollars | GET rate floor | latency floor | read time | write rate floor |",
             "|---|---|---|---|---|---|"]
    for n in slots:
        p = price(req, store, slots=n, connections=connections, prefixes=prefixes)
        lines.append(f"| {n} | ${p['dollars']:,.2f} | {_hours(p['read_rate_floor_s'])} | "
                     f"{_hours(p['read_latency_floor_s'])} | {_hours(p['read_s'])} | "
                     f"{_hours(p['write_rate_floor_s'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.objectstore", description=__doc__.split("\n\n")[0])
    ap.add_argument("shape", help="MAPSxREDUCERS, e.g. 10000x10000")
    ap.add_argument("--map-bytes", default="128MiB", help="shuffle bytes per map file (default %(default)s)")
    ap.add_argument("--spills", type=int, default=1, help="spills per map task (default 1)")
    ap.add_argument("--slots", default="8,64,512", help="reducers running at once (default %(default)s)")
    ap.add_argument("--connections", type=int, default=10, help="concurrent GETs per reducer (botocore's pool: 10)")
    ap.add_argument("--prefixes", type=int, default=1, help="prefixes the map files are spread over (default 1)")
    args = ap.parse_args(argv)
    try:
        maps, reducers = (int(float(x)) for x in args.shape.lower().split("x"))
        slots = [int(float(x)) for x in args.slots.split(",") if x.strip()]
        text = render(maps, reducers, _size(args.map_bytes), slots, spills=args.spills, prefixes=args.prefixes,
                      connections=args.connections)
    except ValueError as exc:
        print(f"error: {exc} (shape is MAPSxREDUCERS, e.g. 10000x10000)", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


__all__ = ["Store", "Requests", "shuffle_requests", "price", "render", "main"]


if __name__ == "__main__":
    sys.exit(main())
