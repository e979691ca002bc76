"""Reload when the config file changes on disk (`reload: {watch: true}`).

The watcher is owned by the process that owns the config: the single Daemon, or the Supervisor
when `workers > 1` (workers never watch; the supervisor forwards its reload to them). It runs
the owner's own reload, the one SIGHUP runs, so a save is validated, applied or rejected
exactly like a SIGHUP.

Why the folder and not the file: editors and deploy tools save by writing a temporary file and
renaming it over the config. The old inode is gone after that, so a watch on the file itself
would go silent after the first save. The folder is watched (not recursively) and changes are
filtered to the config's path; for a symlinked config (a Kubernetes ConfigMap swaps a `..data`
link) any change in its folder counts. Every candidate is then settled by the file's bytes:
a save that leaves the bytes as they were reloads nothing.

The first comparison is against the bytes the running config was loaded from (`baseline`), not
against the file as the watcher finds it when it starts: a save made between loading and
watching would otherwise become the baseline and never be applied.

Two tasks, both owned here: one pumps filesystem events into an `asyncio.Event`, the other
waits for the file to be quiet for `debounce`, compares bytes, and reloads. A folder that
disappears (or is replaced) is waited for and watched again; the daemon keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Final

import watchfiles

from . import log
from .config import ReloadConfig
from .tasks import BackgroundTask

__all__ = ["ChangeSource", "ConfigWatcher", "watch_folders"]

#: (folders, stop) -> batches of (change, path); an empty batch is a periodic tick.
ChangeSource = Callable[
    [tuple[Path, ...], asyncio.Event], AsyncIterator[Iterable[tuple[object, str]]]
]

# How often the watched folders are re-checked for having been removed or replaced, and how
# long to wait before watching again after that (or after the notifier failed).
_TICK_MS: Final = 1000
_RETRY: Final = 1.0
# A file rewritten without pause is still read at least this often (10 x debounce, >= 5 s).
_MIN_MAX_WAIT: Final = 5.0


def watch_folders(
    folders: tuple[Path, ...], stop: asyncio.Event
) -> AsyncIterator[Iterable[tuple[object, str]]]:
    """watchfiles (inotify/FSEvents; polling with WATCHFILES_FORCE_POLLING) on `folders`."""
    return watchfiles.awatch(
        *folders,
        watch_filter=None,
        stop_event=stop,
        recursive=False,
        step=50,
        rust_timeout=_TICK_MS,
        yield_on_timeout=True,  # an empty batch each tick: time to check the folders
    )


class ConfigWatcher:
    """Runs `reload` when the file at `path` changes, while `settings().watch` is true."""

    def __init__(
        self,
        path: Path,
        reload: Callable[[], Awaitable[object]],
        settings: Callable[[], ReloadConfig],
        *,
        source: ChangeSource = watch_folders,
        retry: float = _RETRY,
        baseline: Callable[[], bytes | None] = lambda: None,
    ) -> None:
        """`baseline()`: the bytes the running config was loaded from, or None when it did
        not come from the file (then the file as found at start is the baseline)."""
        # Absolute but not resolved: a symlinked config must stay the link, not its target.
        self._path = path.absolute()
        self._reload = reload
        self._settings = settings
        self._source = source
        self._retry = retry
        self._baseline = baseline
        self._task = BackgroundTask("config-watch")
        self._stop = asyncio.Event()
        self._closed = False

    @property
    def running(self) -> bool:
        return self._task.running

    async def sync(self) -> None:
        """Start or stop watching to match the current config (at start and after reloads)."""
        if self._closed:  # a reload finishing during shutdown must not start it again
            return
        if self._settings().watch:
            if not self.running:
                self._stop = asyncio.Event()
                self._task.start(self._run(self._stop))
        elif self.running and not self._task.is_current():
            # From the watcher's own reload, `_run` sees the setting and returns by itself.
            await self._stop_task()

    async def close(self) -> None:
        """Stop for good (shutdown): cancel and await the tasks; `sync` does nothing after."""
        self._closed = True
        await self._stop_task()

    async def _stop_task(self) -> None:
        if not self._task.started:
            return
        self._stop.set()  # the notifier's thread returns within one step (50 ms)
        await self._task.stop()

    # -- the owned tasks -----------------------------------------------------------------
    async def _run(self, stop: asyncio.Event) -> None:
        logger = log.get_logger("aiogate.watch")
        logger.info(
            log.CONFIG_WATCH_STARTED,
            path=str(self._path),
            folders=[str(f) for f in self._folders()],
            debounce=self._settings().debounce,
            pid=os.getpid(),
        )
        loaded = self._baseline()
        last = loaded if loaded is not None else await asyncio.to_thread(_read, self._path)
        dirty = asyncio.Event()
        pump = BackgroundTask("config-watch-events")
        pump.start(self._pump(dirty, stop))
        if loaded is not None:
            dirty.set()  # saved after loading, before watching: no event will tell
        try:
            while True:
                await dirty.wait()
                await self._quiet(dirty)
                data = await asyncio.to_thread(_read, self._path)
                if data is None:
                    # Deleted, or not there yet: nothing to apply; the running config stays.
                    logger.warning(log.CONFIG_WATCH_FILE_MISSING, path=str(self._path))
                    continue
                if data == last:
                    continue
                last = data
                logger.info(log.CONFIG_FILE_CHANGED, path=str(self._path), size=len(data))
                try:
                    await self._reload()
                except Exception as exc:  # the reload path reports its own failures
                    logger.error(log.CONFIG_WATCH_FAILED, path=str(self._path), error=repr(exc))
                if not self._settings().watch:  # the new config switched watching off
                    logger.info(log.CONFIG_WATCH_STOPPED, path=str(self._path))
                    return
        finally:
            stop.set()
            await pump.stop()

    async def _quiet(self, dirty: asyncio.Event) -> None:
        """Return once no change has arrived for `debounce` (or the max wait passed)."""
        loop = asyncio.get_running_loop()
        debounce = self._settings().debounce
        deadline = loop.time() + max(_MIN_MAX_WAIT, 10 * debounce)
        while True:
            dirty.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(dirty.wait(), min(debounce, remaining))
            except TimeoutError:
                return

    async def _pump(self, dirty: asyncio.Event, stop: asyncio.Event) -> None:
        """Set `dirty` on every relevant change; survive the folder vanishing or failing."""
        logger = log.get_logger("aiogate.watch")
        warned = False  # one warning per outage, not one per retry
        resync = False
        backoff = self._retry
        while not stop.is_set():
            folders = self._folders()
            identity = _identities(folders)
            if None in identity:
                if not warned:
                    logger.warning(
                        log.CONFIG_WATCH_FAILED,
                        path=str(self._path),
                        error="the config file's folder does not exist; waiting for it",
                    )
                    warned = True
                resync = True
                await asyncio.sleep(self._retry)
                continue
            if resync:
                # The file may have changed while nothing watched it: let the bytes decide.
                if warned:
                    logger.info(log.CONFIG_WATCH_STARTED, path=str(self._path), resumed=True)
                dirty.set()
                resync = warned = False
            relevant = self._relevance()
            try:
                async for changes in self._source(folders, stop):
                    backoff = self._retry
                    if any(relevant(changed) for _, changed in changes):
                        dirty.set()
                    if _identities(folders) != identity:
                        break  # removed or replaced: this watch sees nothing any more
            except Exception as exc:  # the notifier itself failed (e.g. inotify limits)
                if not warned:
                    logger.warning(log.CONFIG_WATCH_FAILED, path=str(self._path), error=repr(exc))
                    warned = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            resync = True  # watch again, and re-read the file once watching

    def _folders(self) -> tuple[Path, ...]:
        folders = [self._path.parent]
        target = _target(self._path)
        if target.parent != self._path.parent:  # a link to elsewhere: edits land there
            folders.append(target.parent)
        return tuple(folders)

    def _relevance(self) -> Callable[[str], bool]:
        path = self._path
        target = _target(path)
        linked = target != path
        names = {path.name, target.name}
        folders = {os.path.realpath(f) for f in self._folders()}
        own_folder = os.path.realpath(path.parent)

        def relevant(changed: str) -> bool:
            folder, name = os.path.split(changed)
            if linked:  # a symlink swap anywhere in the config's folder may change it
                return os.path.realpath(folder) in folders | {own_folder}
            return name in names and os.path.realpath(folder) in folders

        return relevant


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _target(path: Path) -> Path:
    with contextlib.suppress(OSError, RuntimeError):
        return path.resolve(strict=True)
    return path


def _identities(folders: tuple[Path, ...]) -> tuple[tuple[int, int] | None, ...]:
    """(device, inode) of each folder; None for a missing one. A new inode: replaced."""
    out: list[tuple[int, int] | None] = []
    for folder in folders:
        try:
            st = os.stat(folder)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_dev, st.st_ino))
    return tuple(out)
