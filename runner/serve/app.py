"""The FastAPI app: OpenAI's images endpoint, AUTOMATIC1111's txt2img, models, health and metrics.

Request bodies are read and checked by runner/serve/protocol.py (not by pydantic models), so every bad request
gets OpenAI's error body with the field named, status 400, instead of FastAPI's 422 validation list.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runner.serve.metrics import CONTENT_TYPE
from runner.serve.protocol import BadRequest, ParsedRequest, parse_a1111, parse_openai
from runner.serve.service import ApiError, ClientGone, Service

log = logging.getLogger(__name__)

CLIENT_CLOSED = 499  # nginx's status for a request whose client went away (nobody receives it)


def _b64_pngs(generation: Any) -> list[str]:
    return [base64.b64encode(generation.png(i)).decode("ascii") for i in range(len(generation.arrays))]


def _render(generation: Any, answer: Callable[..., dict]) -> tuple[int, bytes]:
    images = _b64_pngs(generation)
    return len(images), json.dumps(answer(generation, images)).encode("utf-8")


def _openai_answer(generation: Any, images: list[str]) -> dict[str, Any]:
    seed = generation.settings.seed
    return {"created": int(time.time()), "data": [{"b64_json": image, "seed": seed} for image in images]}


def _a1111_answer(generation: Any, images: list[str], sampler: str, model: str) -> dict[str, Any]:
    s = generation.settings
    negative = s.negative_prompts[0] if s.negative_prompts else ""
    parameters = {
        "prompt": s.prompts[0],
        "negative_prompt": negative,
        "seed": s.seed,
        "steps": s.steps,
        "cfg_scale": s.guidance,
        "width": s.width,
        "height": s.height,
        "batch_size": s.images_per_prompt,
        "n_iter": 1,
        "sampler_name": sampler,
    }
    info = {
        **parameters,
        "all_prompts": [s.prompts[0]] * len(images),
        "all_negative_prompts": [negative] * len(images),
        "all_seeds": [s.seed] * len(images),
        "sd_model_name": model,
        "infotexts": [meta["parameters"] for meta in generation.metadata],
    }
    return {"images": images, "parameters": parameters, "info": json.dumps(info)}


MAX_BODY_BYTES = 1 << 20  # a request is a prompt and a few numbers; refuse bodies that could exhaust memory


def _too_large() -> ApiError:
    return ApiError(413, "invalid_request_error", f"the request body is larger than {MAX_BODY_BYTES} bytes")


async def _read_json(request: Request) -> Any:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise _too_large()
    try:
        return json.loads(raw)
    # ValueError: also integers beyond Python's digit limit; RecursionError: absurdly nested arrays.
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        message = " ".join(str(err).split())[:200] or type(err).__name__
        raise BadRequest(f"the request body is not valid JSON: {message}", None) from err


class ReplicaHeader:
    """ASGI middleware: every HTTP answer names the replica that made it (`X-Replica`), so behind a load
    balancer (Ray Serve) a client and the tests can tell the replicas apart."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.header = (b"x-replica", replica.encode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        await self.app(scope, receive, send_named)


def create_app(service: Service, replica: str | None = None) -> FastAPI:
    """The app for `service` (loaded or loading); the caller starts the service. `replica`: a name sent as
    the `X-Replica` header of every answer."""
    app = FastAPI(title="diffusion-runner", description="Text-to-image generation", version="1")
    app.state.service = service
    if replica is not None:
        app.add_middleware(ReplicaHeader, replica=replica)
    metrics = service.metrics

    def error_response(endpoint: str, err: ApiError) -> JSONResponse:
        metrics.errors.labels(str(err.status)).inc()
        metrics.requests.labels(endpoint, str(err.status)).inc()
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    async def handle(
        endpoint: str, request: Request, parse: Callable[..., ParsedRequest], answer: Callable[..., dict]
    ) -> Response:
        metrics.in_flight.inc()
        started = time.perf_counter()
        try:
            body = await _read_json(request)
            parsed = parse(body, service.limits())
            generation = await service.generate(parsed, request.is_disconnected)
            # PNG encoding and the JSON of several megabytes of base64 stay off the event loop.
            count, content = await asyncio.to_thread(_render, generation, answer)
            metrics.images.inc(count)
            metrics.requests.labels(endpoint, "200").inc()
            return Response(content, media_type="application/json")
        except BadRequest as err:
            return error_response(endpoint, ApiError(400, "invalid_request_error", str(err), err.param))
        except ApiError as err:
            return error_response(endpoint, err)
        except ClientGone:
            metrics.requests.labels(endpoint, str(CLIENT_CLOSED)).inc()
            return Response(status_code=CLIENT_CLOSED)
        except Exception as err:  # noqa: BLE001 - a bug must still answer in the API's shape, and be counted
            log.exception("%s request failed", endpoint)
            message = f"internal error: {type(err).__name__}: {' '.join(str(err).split())[:300]}"
            return error_response(endpoint, ApiError(500, "server_error", message))
        finally:
            metrics.in_flight.dec()
            metrics.request_latency.labels(endpoint).observe(time.perf_counter() - started)

    @app.post("/v1/images/generations")
    async def openai_images(request: Request) -> Response:
        return await handle("openai", request, parse_openai, _openai_answer)

    @app.post("/sdapi/v1/txt2img")
    async def a1111_txt2img(request: Request) -> Response:
        def answer(generation: Any, images: list[str]) -> dict[str, Any]:
            return _a1111_answer(generation, images, service.pipeline.sampler, service.pipeline.model_name)

        return await handle("a1111", request, parse_a1111, answer)

    @app.get("/v1/models")
    async def models() -> Response:
        data = []
        if service.pipeline is not None:
            model = {"id": service.pipeline.model_name, "object": "model", "created": service.created}
            data.append({**model, "owned_by": "diffusion-runner"})
        return JSONResponse({"object": "list", "data": data})

    @app.get("/healthz")
    async def healthz() -> Response:
        body = {"status": service.state}
        if service.pipeline is not None:
            body["model"] = service.pipeline.model_name
        if service.failure:
            body["error"] = service.failure
        if service.state == "ready" and not service.worker_alive():
            body["status"], body["error"] = "failed", "the batch worker stopped; restart the service"
        return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        err = ApiError(exc.status_code, "invalid_request_error", f"{request.method} {request.url.path}: {exc.detail}")
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    return app
