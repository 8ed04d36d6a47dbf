"""Functions the benchmark deploys."""

import time

import runloop


@runloop.function
def echo(text: str) -> str:
    return text


@runloop.function
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@runloop.function
def greet(name: str, system_coordinator: runloop.SystemCoordinator) -> str:
    """Like the seed's example agent, without its devbox: what a coordinator costs a run."""
    return f"Hello {name} from {system_coordinator.invocation_id}"


@runloop.function
def example_agent(name: str, system_coordinator: runloop.SystemCoordinator) -> str:
    """The seed's example agent, verbatim: a devbox, one command, shut down with the run."""
    devbox = system_coordinator.create_devbox()
    exec_result = devbox.shell_tools.exec("echo 'executed hello from devbox'")
    return f"Devbox ID: {devbox.id}\nExec Result: {exec_result}. User: {name}"
