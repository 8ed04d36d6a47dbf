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
