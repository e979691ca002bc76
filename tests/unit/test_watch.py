"""ConfigWatcher: debounce, byte comparison, ownership, folder loss (fake and real events)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import TextIO

import pytest
from log_testing import events, log_to_file

from aiogate.config import ReloadConfig
from aiogate.watch import ConfigWatcher


@pytest.fixture(autouse=True)
def out(tmp_path: Path) -> Iterator[TextIO]:
    with log_to_file(tmp_path / "stdout") as stream:
        yield stream


async def until(predicate: object, within: float = 5.0) -> None:
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


class FakeEvents:
    """A change source the test drives: `emit(path)` delivers one batch."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[list[tuple[object, str]]] = asyncio.Queue()
        self.started = 0

    def __call__(
        self, folders: tuple[Path, ...], stop: asyncio.Event
    ) -> AsyncIterator[Iterable[tuple[object, str]]]:
        self.started += 1
        return self._iterate(stop)

    async def _iterate(self, stop: asyncio.Event) -> AsyncIterator[Iterable[tuple[object, str]]]:
        while not stop.is_set():
            try:
                yield await asyncio.wait_for(self.queue.get(), 0.05)
            except TimeoutError:
                yield []  # a tick, like watchfiles' yield_on_timeout

    def emit(self, *paths: Path) -> None:
        self.queue.put_nowait([(2, str(p)) for p in paths])


class Owner:
    """Stands in for the Daemon: counts reloads, holds the current `reload:` settings."""

    def __init__(self, settings: ReloadConfig) -> None:
        self.settings = settings
        self.reloads = 0

    async def reload(self) -> None:
        self.reloads += 1


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "conf" / "aiogate.yaml"
    path.parent.mkdir()
    save(path, "a: 1\n")
    return path


# Small, local file operations: sync helpers, so the async tests read as what they do.
def save(path: Path, text: str) -> None:
    path.write_text(text)


def remove(path: Path) -> None:
    path.unlink()


def make_folder(path: Path) -> None:
    path.mkdir()


def watcher(path: Path, owner: Owner, source: object = None, retry: float = 0.05) -> ConfigWatcher:
    kwargs = {} if source is None else {"source": source}
    return ConfigWatcher(path, owner.reload, lambda: owner.settings, retry=retry, **kwargs)  # type: ignore[arg-type]


async def test_off_by_default_starts_nothing(config_file: Path) -> None:
    owner = Owner(ReloadConfig())
    w = watcher(config_file, owner, FakeEvents())
    await w.sync()
    assert not w.running
    await w.close()


async def test_change_reloads_once_after_quiet_period(config_file: Path, out: TextIO) -> None:
    # The debounce is ten times the gap between saves, so a loaded machine that stretches the
    # gaps still sees one burst.
    owner = Owner(ReloadConfig(watch=True, debounce=0.5))
    source = FakeEvents()
    w = watcher(config_file, owner, source)
    await w.sync()
    await until(lambda: source.started == 1)
    (started,) = events(out, "config_watch_started")
    assert started["path"] == str(config_file)
    assert started["debounce"] == 0.5
    loop = asyncio.get_running_loop()
    for n in range(5):  # a burst: 5 saves 50 ms apart
        save(config_file, f"a: {n + 2}\n")
        source.emit(config_file)
        await asyncio.sleep(0.05)
    burst_end = loop.time()
    await until(lambda: owner.reloads == 1)
    assert loop.time() - burst_end >= 0.4  # waited for the file to be quiet
    await asyncio.sleep(0.6)
    assert owner.reloads == 1
    assert len(events(out, "config_file_changed")) == 1
    await w.close()
    assert not w.running


async def test_identical_bytes_and_other_files_do_not_reload(config_file: Path) -> None:
    owner = Owner(ReloadConfig(watch=True, debounce=0))
    source = FakeEvents()
    w = watcher(config_file, owner, source)
    await w.sync()
    await until(lambda: source.started == 1)
    save(config_file, "a: 1\n")  # same bytes
    source.emit(config_file)
    await asyncio.sleep(0.2)
    other = config_file.with_name("notes.txt")
    save(other, "x")
    save(config_file, "a: 2\n")  # changed, but only a sibling is reported
    source.emit(other)
    await asyncio.sleep(0.2)
    assert owner.reloads == 0
    source.emit(config_file)
    await until(lambda: owner.reloads == 1)
    await w.close()


async def test_a_deleted_file_keeps_the_config(config_file: Path) -> None:
    owner = Owner(ReloadConfig(watch=True, debounce=0))
    source = FakeEvents()
    w = watcher(config_file, owner, source)
    await w.sync()
    await until(lambda: source.started == 1)
    remove(config_file)
    source.emit(config_file)
    await asyncio.sleep(0.1)
    assert owner.reloads == 0
    save(config_file, "a: 1\n")  # back, as it was: nothing to do
    source.emit(config_file)
    await asyncio.sleep(0.1)
    assert owner.reloads == 0
    assert w.running
    await w.close()


async def test_a_reload_that_switches_watching_off_stops_the_watcher(config_file: Path) -> None:
    owner = Owner(ReloadConfig(watch=True, debounce=0))
    source = FakeEvents()
    w = watcher(config_file, owner, source)

    async def reload_and_turn_off() -> None:
        owner.reloads += 1
        owner.settings = ReloadConfig(watch=False)
        await w.sync()  # as Daemon.reload does: from inside the watcher's own task

    w._reload = reload_and_turn_off
    await w.sync()
    await until(lambda: source.started == 1)
    save(config_file, "a: 2\n")
    source.emit(config_file)
    await until(lambda: not w.running)
    assert owner.reloads == 1
    owner.settings = ReloadConfig(watch=True, debounce=0)
    await w.sync()  # and a later reload switching it on starts it again
    assert w.running
    await w.close()


async def test_the_folder_vanishing_and_returning(config_file: Path) -> None:
    owner = Owner(ReloadConfig(watch=True, debounce=0))
    source = FakeEvents()
    w = watcher(config_file, owner, source)
    await w.sync()
    await until(lambda: source.started == 1)
    shutil.rmtree(config_file.parent)
    await asyncio.sleep(0.2)
    assert w.running
    assert owner.reloads == 0
    make_folder(config_file.parent)
    save(config_file, "a: 3\n")
    await until(lambda: source.started == 2)  # watching again...
    await until(lambda: owner.reloads == 1)  # ...and the new bytes were noticed
    await w.close()


async def test_a_failing_notifier_is_retried(config_file: Path) -> None:
    owner = Owner(ReloadConfig(watch=True, debounce=0))
    calls = 0

    def broken(folders: tuple[Path, ...], stop: asyncio.Event) -> AsyncIterator[list[object]]:
        nonlocal calls
        calls += 1

        async def fail() -> AsyncIterator[list[object]]:
            raise OSError("inotify watch limit reached")
            yield []

        return fail()

    w = watcher(config_file, owner, broken, retry=0.01)
    await w.sync()
    await until(lambda: calls >= 3)
    assert w.running
    await w.close()


async def test_real_watchfiles_sees_a_rename_replace(config_file: Path) -> None:
    owner = Owner(ReloadConfig(watch=True, debounce=0.05))
    w = watcher(config_file, owner)
    await w.sync()
    # watchfiles starts watching on its first poll; keep saving until one is seen
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    n = 0
    while owner.reloads == 0:
        assert loop.time() < deadline, "no reload seen"
        n += 1
        staging = config_file.with_suffix(".tmp")
        save(staging, f"a: {n + 1}\n")
        staging.replace(config_file)  # what an editor's save does
        await asyncio.sleep(0.3)
    await w.close()


async def test_nothing_starts_after_close(config_file: Path) -> None:
    owner = Owner(ReloadConfig(watch=True, debounce=0))
    w = watcher(config_file, owner, FakeEvents())
    await w.sync()
    assert w.running
    await w.close()
    await w.sync()  # e.g. a SIGHUP reload finishing while the daemon shuts down
    assert not w.running


# -- the baseline is what the running config was loaded from ----------------------------------
async def test_a_save_between_loading_and_watching_is_applied(config_file: Path) -> None:
    owner = Owner(ReloadConfig(watch=True, debounce=0))
    loaded = b"a: 1\n"  # what the fixture wrote, and the owner loaded
    save(config_file, "a: 2\n")  # saved after the owner loaded, before the watcher started
    source = FakeEvents()  # and no event ever tells of it
    w = ConfigWatcher(
        config_file, owner.reload, lambda: owner.settings, source=source, baseline=lambda: loaded
    )
    await w.sync()
    await until(lambda: owner.reloads == 1)
    await asyncio.sleep(0.2)
    assert owner.reloads == 1
    await w.close()


async def test_an_unchanged_file_is_not_reloaded_at_start(config_file: Path) -> None:
    for baseline in (b"a: 1\n", None):  # None: not from the file (PUT)
        owner = Owner(ReloadConfig(watch=True, debounce=0))
        source = FakeEvents()
        w = ConfigWatcher(
            config_file,
            owner.reload,
            lambda: owner.settings,  # noqa: B023 - awaited within the iteration
            source=source,
            baseline=lambda: baseline,  # noqa: B023
        )
        await w.sync()
        await until(lambda: source.started == 1)  # noqa: B023
        await asyncio.sleep(0.2)
        assert owner.reloads == 0
        save(config_file, f"b: {baseline is None}\n")  # a later save still counts
        source.emit(config_file)
        await until(lambda: owner.reloads == 1)  # noqa: B023
        await w.close()
