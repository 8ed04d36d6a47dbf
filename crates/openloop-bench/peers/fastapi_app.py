"""The FastAPI peer: a bare echo endpoint, served by uvicorn (one worker) for openloop-bench."""

from typing import Any

from fastapi import FastAPI

app = FastAPI()


@app.post("/echo")
async def echo(body: dict[str, Any]) -> dict[str, Any]:
    return body
