"""Word count over a text input several times larger than the workers' memory, on memory-limited workers.

Two ``dask worker`` processes with ``--memory-limit`` count the words of a generated corpus at least
three times larger than their combined limit. The result must equal an independent reference
computed here by streaming the files chunk by chunk with pyarrow, and the workers' resident memory
(sampled in a background thread, plus the kernel's high-water mark) must stay under the limit.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import engine
from fixtures import cli_cluster
from jobs.wordcount import job as wordcount

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# Per worker. The engine sizes its map-side buffer from the workers' memory limit (1/24 of it), so
# a 512 MiB worker (~160 MiB of it the idle process) has room for a spill and its copies.
MEMORY_LIMIT = 512 << 20
WORKERS = 2
INPUT_FACTOR = 3.05               # input bytes / total worker memory
FILES = 4
BLOCK = 8 << 20                   # the generated text block that files repeat (with variations)


# ---------------------------------------------------------------------------------------------
# Data


def _block(rng: np.random.Generator, size: int) -> bytes:
    """About ``size`` bytes of lines of 1..20 Zipf-distributed mixed-case words, single spaces, no empty lines."""
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
    vocab = sorted({bytes(rng.choice(letters, size=int(n))) for n in rng.integers(2, 12, 60_000)})
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    weights /= weights.sum()
    words = rng.choice(len(vocab), size=size // 7, p=weights)
    lines, i = [], 0
    lengths = rng.integers(1, 21, size=len(words))
    for n in lengths:
        if i >= len(words):
            break
        lines.append(b" ".join(vocab[w] for w in words[i:i + n]))
        i += n
    return b"\n".join(lines) + b"\n"


def write_corpus(directory, total_bytes: int, files: int, seed: int = 0) -> list[str]:
    """``files`` text files of ``total_bytes`` in all: a block repeated, each copy followed by a line of its own."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    block = _block(rng, BLOCK)
    per_file = -(-total_bytes // files)
    paths = []
    for f in range(files):
        path = os.path.join(str(directory), f"corpus-{f}.txt")
        written, rep = 0, 0
        with open(path, "wb", buffering=0) as out:
            while written < per_file:
                extra = f"file{f} copy{rep} Marker{rep % 97} {'EXTRA ' * (rep % 5)}tail{rep % 13}\n".encode()
                written += out.write(block) + out.write(extra)
                rep += 1
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Independent reference: stream each file in chunks cut at a newline, count, merge


def _count_chunk(data: bytes) -> pa.Table:
    # The corpus is ASCII with single spaces and no empty lines, so words are exactly the pieces between
    # single separators: a tokenization independent of the engine's (utf8_lower, utf8_split_whitespace).
    data = data.lower().replace(b"\n", b" ")
    words = pc.list_flatten(pc.split_pattern(pa.array([data], type=pa.large_binary()), b" "))
    counts = pc.value_counts(words)
    return pa.table({"word": counts.field("values").cast(pa.string()), "count": counts.field("counts")})


def _chunks(path: str, size: int = 32 << 20):
    carry = b""
    with open(path, "rb") as f:
        while True:
            block = f.read(size)
            if not block:
                break
            data = carry + block
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            carry = data[cut + 1:]
            if cut:
                yield data[:cut]
    if carry:
        yield carry


def reference_counts(paths: list[str]) -> pa.Table:
    partials: list[pa.Table] = []
    with ThreadPoolExecutor(2) as pool:
        for path in paths:
            partials.extend(pool.map(_count_chunk, _chunks(path)))
            merged = pa.concat_tables(partials).group_by("word").aggregate([("count", "sum")])
            partials = [pa.table({"word": merged["word"], "count": merged["count_sum"]})]
    return partials[0]


# ---------------------------------------------------------------------------------------------
# Memory sampling


class RSSSampler(threading.Thread):
    """Samples the RSS of every process under the given roots (nannies and their workers)."""

    def __init__(self, roots: list[int], interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        import psutil
        self.psutil = psutil
        self.roots = [psutil.Process(pid) for pid in roots]
        self.interval = interval
        self.peak: dict[int, int] = {}
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for root in self.roots:
                try:
                    procs = [root, *root.children(recursive=True)]
                except self.psutil.NoSuchProcess:
                    continue
                for p in procs:
                    try:
                        rss = p.memory_info().rss
                    except self.psutil.NoSuchProcess:
                        continue
                    self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def _pauses(workdir) -> int:
    """How often the workers paused for memory (dask pauses a worker above 80% of its limit)."""
    n = 0
    for name in os.listdir(workdir):
        if name.startswith("worker-") and name.endswith(".log"):
            with open(os.path.join(workdir, name), errors="replace") as f:
                n += sum("Pausing worker" in line for line in f)
    return n


def _high_water_mark(pid: int) -> int | None:
    """The kernel's peak resident set size of ``pid`` (VmHWM), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# ---------------------------------------------------------------------------------------------


def test_wordcount_larger_than_cluster_memory(tmp_path):
    pytest.importorskip("psutil")
    total = int(INPUT_FACTOR * WORKERS * MEMORY_LIMIT)
    t0 = time.monotonic()
    paths = write_corpus(tmp_path / "corpus", total, FILES)
    input_bytes = sum(os.path.getsize(p) for p in paths)
    generated = time.monotonic() - t0
    assert input_bytes >= 3 * WORKERS * MEMORY_LIMIT

    with cli_cluster(tmp_path / "cluster", WORKERS, worker_args=("--memory-limit", str(MEMORY_LIMIT))) as c:
        workers = c.worker_pids()                     # address -> pid of the process that runs tasks
        sampler = RSSSampler([p.pid for p in c.workers])
        sampler.start()
        t1 = time.monotonic()
        try:
            result = engine.run(wordcount, str(tmp_path / "corpus"), str(tmp_path / "out"), cluster=c.address)
        finally:
            sampler.stop()
        run_seconds = time.monotonic() - t1
        hwm = {pid: _high_water_mark(pid) for pid in workers.values()}
        after = c.worker_pids()
        pauses = _pauses(c.workdir)

    t2 = time.monotonic()
    expected = reference_counts(paths)
    reference_seconds = time.monotonic() - t2
    actual = engine.read(result.output)

    worker_peaks = {pid: sampler.peak.get(pid, 0) for pid in workers.values()}
    peak = max(worker_peaks.values())
    peak_hwm = max(v for v in hwm.values() if v is not None) if any(hwm.values()) else None
    map_stage = next(s for s in result.report.stages if s.kind == "map")
    reduce_stage = next(s for s in result.report.stages if s.kind == "reduce")
    print(f"\nout-of-core word count: input {input_bytes / 2**30:.2f} GiB in {FILES} files "
          f"({input_bytes / (WORKERS * MEMORY_LIMIT):.1f}x the workers' {WORKERS} x {MEMORY_LIMIT >> 20} MiB); "
          f"generated in {generated:.1f}s\n"
          f"  engine run {run_seconds:.1f}s ({input_bytes / run_seconds / 2**20:.0f} MiB/s): "
          f"{map_stage.tasks} map tasks {map_stage.duration:.1f}s, {reduce_stage.tasks} reduce tasks "
          f"{reduce_stage.duration:.1f}s; {result.rows:,} distinct words\n"
          f"  worker peak RSS (sampled every 50 ms, {sampler.samples} samples): "
          + ", ".join(f"{v / 2**20:.0f} MiB" for v in worker_peaks.values())
          + "; kernel high-water mark: "
          + ", ".join(f"{v / 2**20:.0f} MiB" if v else "?" for v in hwm.values())
          + f"; {pauses} memory pause(s)\n  reference (pyarrow, streamed in this process) {reference_seconds:.1f}s")

    assert after == workers, "a worker was restarted (killed for memory?) during the run"
    assert result.report.retries == []
    assert map_stage.tasks >= 2 * FILES                # large files are split into several map tasks
    assert actual.column_names == ["word", "count"]
    assert actual.num_rows == expected.num_rows
    assert actual.sort_by("word").equals(expected.sort_by("word"))
    assert peak < MEMORY_LIMIT, f"a worker's RSS reached {peak / 2**20:.0f} MiB, over its {MEMORY_LIMIT >> 20} MiB"
    if peak_hwm is not None:
        assert peak_hwm < MEMORY_LIMIT, f"a worker's peak RSS (VmHWM) was {peak_hwm / 2**20:.0f} MiB"
