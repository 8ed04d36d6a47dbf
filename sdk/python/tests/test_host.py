"""The warm process: what it imports before runs are forked from it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SDK = Path(__file__).resolve().parents[1]


def _modules_after_preload(agent: str) -> set[str]:
    """The modules a fresh warm process holds once it has imported ``agent`` and preloaded
    for its functions (in a process of its own: this one has imported everything already)."""
    script = textwrap.dedent(
        """
        import sys
        import runloop
        from runloop._host import _preload
        from runloop._function import registered_functions
        exec(sys.argv[1])
        _preload(registered_functions())
        print("\\n".join(sorted(sys.modules)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, textwrap.dedent(agent)],
        cwd=SDK,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_a_plain_function_preloads_neither_asyncio_nor_the_client() -> None:
    modules = _modules_after_preload(
        """
        @runloop.function
        def echo(text: str) -> str:
            return text
        """
    )
    assert "runloop._host" in modules
    assert "asyncio" not in modules, "every run's process would copy asyncio's pages for nothing"
    assert "runloop._client" not in modules


def test_a_coordinator_function_preloads_the_client() -> None:
    modules = _modules_after_preload(
        """
        @runloop.function
        def greet(name: str, system_coordinator: runloop.SystemCoordinator) -> str:
            return name
        """
    )
    assert {"runloop._client", "runloop._devbox"} <= modules
    assert "asyncio" not in modules
    # The client speaks HTTP on the run's Unix socket itself (``ssl`` and ``email`` with
    # ``http.client`` would be every run's to copy and tear down).
    assert "http.client" not in modules
    assert "ssl" not in modules


def test_an_async_function_preloads_asyncio() -> None:
    modules = _modules_after_preload(
        """
        @runloop.function
        async def wait(seconds: float) -> float:
            return seconds
        """
    )
    assert "asyncio" in modules


def test_the_spare_rehearsal_leaves_the_warm_process_as_it_was() -> None:
    """``_rehearse_spare`` runs in the warm process before it forks: its output streams, its
    logging and its descriptors must be as they were (a run's streams set up there for real
    would send the warm process's output nowhere)."""
    script = textwrap.dedent(
        """
        import logging, os, sys
        from runloop._run import _rehearse_spare
        root = logging.getLogger()
        root.addHandler(logging.NullHandler())
        root.setLevel(logging.ERROR)
        def state():
            return (sys.stdout, sys.stderr, list(root.handlers), root.level,
                    sorted(os.listdir("/proc/self/fd")))
        before = state()
        _rehearse_spare()
        after = state()
        print("same" if before == after else f"changed: {before} -> {after}")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=SDK, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "same", out.stdout + out.stderr


def test_memory_freed_before_the_first_fork_goes_back_to_the_system() -> None:
    """``_release_free_memory`` (the end of ``_warm_up``) returns the allocator's free pages
    that lie between live allocations, which the allocator keeps by itself."""
    script = textwrap.dedent(
        """
        from runloop._isolation import _release_free_memory
        def anonymous_kib():
            for line in open("/proc/self/smaps_rollup"):
                if line.startswith("Anonymous:"):
                    return int(line.split()[1])
        blocks = [bytes(2000) for _ in range(20000)]
        kept = blocks[::16]
        del blocks
        before = anonymous_kib()
        released = _release_free_memory()
        print(released, before - anonymous_kib(), len(kept))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=SDK, capture_output=True, text=True, check=True
    )
    released, freed_kib, _ = out.stdout.split()
    assert released == "True", out.stdout + out.stderr
    # About 37 MB lie free between the kept blocks.
    assert int(freed_kib) > 16 * 1024, out.stdout
