"""Publishing a staged result: the partitions of a committed staging output replace the same
partitions of the live output, in one manifest swap.

A run with ``stage_to=PATH`` commits into ``PATH`` (a complete output with its own manifest, which
names the live output it was staged for), so it can be inspected and compared with what it would
replace (:mod:`engine.diff`) before anyone reads it. :func:`publish` then, holding the staged
output's lock (nobody stages into it meanwhile) and the live output's lock:

1. checks every staged file against the staged manifest (size and CRC32C), so nothing damaged
   goes live;
2. copies the staged files to the same relative paths under the live output (a hard link on a
   local disk, a server-side copy on S3); their names carry the staged run's id and a uuid, so
   they never overwrite a live file, and readers do not see them until step 3;
3. swaps the live manifest (compare-and-swap against the generation it read): the staged
   partitions replace the live ones, every other live partition stays, and each partition keeps
   its provenance (the run, job fingerprint, input snapshot and logical date that produced it);
4. removes the replaced generation's files, then the staged files, then the staged manifest.

A publish killed at any point leaves the live output at its old or its new generation, never a mix:
before the swap the copied files are unreferenced (the next run or ``mapreduce clean`` removes
them), and the staged manifest stays until everything else is done, so running the same
``publish`` again finishes the job: before the swap it starts over; after it, it finds the staged
files in the live manifest, removes what is left over and says ``already``.

This module never imports dask.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import posixpath
import shutil
from dataclasses import dataclass
from typing import Any

from . import commit
from .commit import MANIFEST, MANIFEST_FORMAT, Manifest, load_manifest, partition_of, seal
from .datasets import filesystem, is_local, is_s3
from .errors import CommitError, ConcurrentRunError, ManifestError


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish` did: the partitions it replaced or added, and the live generation now."""

    output: str
    staged: str
    run_id: str
    partitions: tuple[str, ...]
    rows: int
    generation: int
    already: bool = False          # the staged run was live already (a publish repeated after a kill)

    def __str__(self) -> str:
        if self.already:
            return f"{self.output}: run {self.run_id} was already published (generation {self.generation})"
        shown = ", ".join(self.partitions[:5]) + (", …" if len(self.partitions) > 5 else "")
        return (f"published {len(self.partitions)} partition(s) ({shown}), {self.rows:,} rows of run {self.run_id} "
                f"from {self.staged} to {self.output} (generation {self.generation})")


def _copy(src_fs, src: str, dst_fs, dst: str) -> None:
    """``src`` to ``dst`` without going through this process where the store allows it.

    ``dst`` may exist already only as a copy made by an earlier publish of the same staged run (the
    names carry the run id and a uuid): left by a publish killed before its swap (unreferenced, so it
    is replaced), or live already (then locally the very same file, left alone, and on S3 rewritten
    with the same bytes in one atomic copy).
    """
    if is_local(src_fs) and is_local(dst_fs):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            if os.path.samefile(src, dst):
                return
            os.unlink(dst)             # an unreferenced copy of an interrupted publish
        except FileNotFoundError:
            pass
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        return
    if type(src_fs) is type(dst_fs) and (is_s3(src_fs) or not is_local(src_fs)):
        src_fs.copy(src, dst)
        return
    with src_fs.open(src, "rb") as fin, dst_fs.open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 8 << 20)


def _is_live(live: Manifest | None, staged: Manifest) -> bool:
    """True when the staged run's result is the live one already (a publish repeated after it swapped)."""
    if live is None:
        return False
    if not staged.files:
        return live.doc.get("published_from_run") == staged.doc.get("run_id")
    paths = {f["path"] for f in live.files}
    return all(f["path"] in paths for f in staged.files)


def staged_for(staged: Manifest) -> str | None:
    """The live output a staged output was staged for (recorded by ``run(..., stage_to=)``)."""
    return staged.doc.get("staged_for")


def merged_doc(live: Manifest | None, staged: Manifest, now: str) -> dict:
    """The live output's next manifest: ``staged``'s partitions replace the same ones of ``live``."""
    sdoc = staged.doc
    produced = {partition_of(f["path"]) for f in staged.files}
    generation = live.generation + 1 if live is not None else 1
    kept = [f for f in live.files if partition_of(f["path"]) not in produced] if live is not None else []
    offset = 1 + max((f["partition"] for f in kept), default=-1)
    files = kept + [{**f, "partition": f["partition"] + offset} for f in staged.files]
    ldoc = live.doc if live is not None else {}
    partitions = {d: p for d, p in (ldoc.get("partitions") or {}).items() if d not in produced}
    for d, p in (sdoc.get("partitions") or {}).items():
        partitions[d] = {**p, "generation": generation, "published_at": now}
    staged_dates = sdoc.get("dates") or {}
    dates = {day: rec for day, rec in (ldoc.get("dates") or {}).items()
             if day not in staged_dates and not (set(rec.get("partitions") or ()) & produced)}
    for day, rec in staged_dates.items():
        dates[day] = {**rec, "generation": generation}
    doc = {k: v for k, v in sdoc.items() if k not in ("checksum", "staged_for", "files", "partitions", "dates",
                                                       "generation", "committed_at")}
    doc.update({"format": MANIFEST_FORMAT, "version": 2, "generation": generation, "files": files,
                "committed_at": now, "partitions": dict(sorted(partitions.items())), "published_from_run": sdoc["run_id"]})
    if dates:
        doc["dates"] = dict(sorted(dates.items()))
    # rejected rows: the live output's that stay (as for an overwrite of these partitions), and the staged run's
    rejected = commit.kept_rejects([e for e in ldoc.get("rejected") or [] if isinstance(e, dict)],
                                   doc["partitions"], set(staged_dates))
    rejected += [e for e in sdoc.get("rejected") or [] if isinstance(e, dict)]
    doc.pop("rejected", None)
    doc.pop("rejected_rows", None)
    if rejected:
        doc["rejected"] = rejected
        doc["rejected_rows"] = int(sdoc.get("rejected_rows") or 0)
    return seal(doc)


def publish(staged: str, output: str | None = None, storage_options: dict | None = None, *,
            hook: Any = None, force: bool = False) -> PublishResult:
    """Atomically replace the live output's partitions with those of the staged output ``staged``.

    ``output`` defaults to the live output the staged run was staged for. Raises
    :class:`~engine.errors.ManifestError` if nothing is committed at ``staged``,
    :class:`~engine.errors.IntegrityError` if a staged file is damaged, :class:`~engine.errors.CommitError`
    if the partitioning or schema differ from the live output's, and
    :class:`~engine.errors.ConcurrentRunError` if another run holds the live or the staged output.

    A live partition that another run rewrote after this result was staged is not replaced: the
    publish raises :class:`~engine.errors.CommitError` naming it (stage again, or pass ``force=True``
    to replace it anyway), so an old staged result never overwrites newer data.

    Publishing the same staged output again after a publish was interrupted finishes it: before its
    manifest swap nothing was live and it starts over; after it, the result says ``already`` and the
    leftovers (replaced files, the staged output) are removed. ``hook(point)`` is called at each step
    (fault-injection tests kill the process there); by default ``ENGINE_FAULTS`` decides, as for runs.

    >>> engine.run(daily, "events/", "agg/", partition_by=["date"], date="2026-11-30",
    ...            where="date = '{date}'", stage_to="agg-staged/")          # doctest: +SKIP
    >>> print(engine.diff.compare("agg/", "agg-staged/"))                      # doctest: +SKIP
    >>> engine.publish.publish("agg-staged/")                                  # doctest: +SKIP
    """
    from .lock import output_lock
    if hook is None:
        from .faults import Faults
        faults = Faults.from_env()
        hook = faults.commit_hook if faults is not None else None
    sfs, sroot = filesystem(staged, storage_options)
    smanifest = _staged_manifest(sfs, sroot, staged)
    target = output or staged_for(smanifest)
    if not target:
        raise CommitError(f"{staged} does not say which output it was staged for; pass the live output: "
                          f"publish({staged!r}, 'OUT')")
    if not smanifest.doc.get("partition_by"):
        raise CommitError(f"{staged} is not partitioned: publishing replaces partitions of a partitioned output "
                          "(run with partition_by=[...])")
    lfs, live = filesystem(target, storage_options)
    if type(lfs) is type(sfs) and live.rstrip("/") == sroot.rstrip("/"):
        raise CommitError(f"cannot publish {staged} onto itself: pass the live output it replaces partitions of")
    # The staged output's lock: nobody stages into it or publishes it meanwhile.
    with output_lock(sfs, sroot):
        smanifest = _staged_manifest(sfs, sroot, staged)          # as it is now that no one else writes it
        run_id = smanifest.doc["run_id"]
        produced = tuple(sorted({partition_of(f["path"]) for f in smanifest.files}))
        verified = _is_live(load_manifest(lfs, live), smanifest)
        if not verified:
            commit.verify_manifest(sfs, smanifest, pages=False)     # nothing damaged goes live
            verified = True
        with output_lock(lfs, live) as lock:
            previous = load_manifest(lfs, live)
            if _is_live(previous, smanifest):
                # an earlier publish swapped the manifest and was stopped before it had cleaned up
                commit.cleanup(lfs, live, keep_run=None, manifest=previous)
                _remove_staged_files(sfs, sroot)
                result = PublishResult(target, staged, run_id, produced, smanifest.rows, previous.generation, True)
            else:
                if not force:
                    _check_not_stale(previous, smanifest, produced, staged, target)
                result = _swap(lfs, live, target, sfs, sroot, staged, smanifest, previous, produced, lock, hook)
    _remove_staged_dir(sfs, sroot)
    return result


def _check_not_stale(previous: Manifest | None, smanifest: Manifest, produced: tuple[str, ...], staged: str,
                     target: str) -> None:
    """CommitError if a live partition the staged result replaces changed after it was staged."""
    against = smanifest.doc.get("staged_against")
    if not isinstance(against, dict):
        return                                        # staged by hand, or by an engine that did not record it
    then = against.get("partitions") or {}
    now = (previous.doc.get("partitions") or {}) if previous is not None else {}
    stale = []
    for d in produced:
        current = now.get(d, {}).get("run_id") if isinstance(now.get(d), dict) else None
        if current != then.get(d) and current != smanifest.doc["run_id"]:
            stale.append(f"{d} (staged against run {then.get(d) or 'none'}, now run {current or 'none'})")
    if stale:
        raise CommitError(f"cannot publish {staged} to {target}: {len(stale)} live partition(s) changed after it was "
                          f"staged: {'; '.join(stale[:5])}. Publishing would replace newer data with an older "
                          f"result: stage the job again, or publish with force=True (`mapreduce publish --force`) "
                          "to replace them anyway")


def _staged_manifest(fs, root: str, staged: str) -> Manifest:
    smanifest = load_manifest(fs, root)
    if smanifest is None:
        raise ManifestError(f"nothing is staged at {staged} (no {MANIFEST} manifest): run the job with "
                            f"stage_to={staged!r} first, or it was published already",
                            [f"{posixpath.join(root, MANIFEST)}: missing"])
    return smanifest


def _swap(lfs, live: str, target: str, sfs, sroot: str, staged: str, smanifest: Manifest,
          previous: Manifest | None, produced: tuple[str, ...], lock: Any, hook: Any) -> PublishResult:
    """Copy the staged files next to the live ones, swap the live manifest, clean up (live lock held)."""
    if previous is not None:
        if list(previous.doc.get("partition_by") or []) != list(smanifest.doc["partition_by"]):
            raise CommitError(f"cannot publish {staged} to {target}: the live output is partitioned by "
                              f"{previous.doc.get('partition_by') or 'nothing'}, the staged one by "
                              f"{smanifest.doc['partition_by']}")
        if smanifest.files and previous.files and not commit._same_schema(previous.schema, smanifest.schema):
            raise CommitError(f"cannot publish {staged} to {target}: the live schema {previous.schema} differs "
                              f"from the staged {smanifest.schema}; write to a new output or overwrite it whole")
    for f in smanifest.files:
        _copy(sfs, smanifest.path_of(f), lfs, posixpath.join(live, f["path"]))
        if hook:
            hook("publish")
    for e in smanifest.doc.get("rejected") or []:      # the staged run's rejected rows go live with its data
        if isinstance(e, dict):
            _copy(sfs, smanifest.path_of(e), lfs, posixpath.join(live, e["path"]))
    now = _dt.datetime.now(_dt.timezone.utc).isoformat()
    doc = merged_doc(previous, smanifest, now)
    data = commit.manifest_text(doc)
    if hook:
        hook("before-manifest")
    lock.check()
    try:
        commit.write_manifest(lfs, posixpath.join(live, MANIFEST), data, previous)
    except FileExistsError:
        raise ConcurrentRunError(f"another run committed {target} while {staged} was being published; nothing "
                                 "was published: publish again") from None
    if hook:
        hook("after-manifest")
    manifest = Manifest(doc, live, data)
    commit.cleanup(lfs, live, keep_run=None, manifest=manifest)
    if hook:
        hook("after-cleanup")
    _remove_staged_files(sfs, sroot)
    return PublishResult(target, staged, smanifest.doc["run_id"], produced, smanifest.rows, manifest.generation)


def _remove_staged_files(fs, root: str) -> None:
    """Remove a published staged output's files, then its manifest: a publish stopped in between finds
    the manifest and, its files being live, finishes as ``already``."""
    commit.cleanup(fs, root, keep_run=None, manifest=None)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(posixpath.join(root, MANIFEST))
    if is_s3(fs):
        fs.invalidate_cache(root)


def _remove_staged_dir(fs, root: str) -> None:
    """On a local disk, the emptied staged directory and its lock file (once the lock is released)."""
    if is_local(fs):
        with contextlib.suppress(OSError):
            # what a backfill into the staging output left: its lock and holder record
            for name in ("_holder.json", "_lock"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(root, "_backfill", name))
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(os.path.join(root, "_backfill"))
            lock = os.path.join(root, "_lock")
            if os.path.exists(lock):
                os.unlink(lock)
            os.rmdir(root)


def _remove_staged(fs, root: str, manifest: Manifest | None = None) -> None:
    """Remove a staged output whole (files, manifest, and locally its directory)."""
    _remove_staged_files(fs, root)
    _remove_staged_dir(fs, root)


__all__ = ["publish", "PublishResult", "merged_doc", "staged_for"]
