"""Wiring only: settings → shared parts (metrics, model store, batcher, keys, safety) → routes, middleware, lifespan.

    app = create_app(ServingSettings(model="digits@production", mlflow_uri="http://127.0.0.1:5000"))

Lifespan: start-up starts the batcher and the model store's polling thread and returns at once (``/readyz`` says
503 until a model is loaded). Shut-down runs after uvicorn has stopped accepting connections and let in-flight
requests finish (``shutdown_timeout_s``): readiness drops, the queue drains, the poller and worker threads stop.
"""

from __future__ import annotations

import importlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from ganops import __version__
from ganops.serving.auth import ApiKeyStore, TokenBuckets
from ganops.serving.batching import DirectGenerator, Generator, MicroBatcher
from ganops.serving.dependencies import Services, authenticate
from ganops.serving.errors import install_error_handlers
from ganops.serving.gate import WorkGate
from ganops.serving.generation import postprocess_many
from ganops.serving.metrics import ServingMetrics
from ganops.serving.middleware import EdgeGuard, ServingMiddleware
from ganops.serving.model_store import (
    CheckpointResolver,
    LoadedModel,
    ModelLoader,
    ModelRef,
    ModelStore,
    RegistryResolver,
    Resolver,
)
from ganops.serving.routes import generate, health, models, v2, watermark
from ganops.serving.safety import AuditSink, Detector, ObjectStoreAuditSink, SafetyFilter, Watermarker
from ganops.serving.settings import ServingSettings

__all__ = ["create_app", "import_factory", "open_paths"]

logger = logging.getLogger(__name__)

DESCRIPTION = """Generates samples of GANs trained and promoted by ganops. Every sample passes the safety pipeline
(degenerate → nsfw → memorization, fail-closed) and every returned image carries an invisible watermark.
Authenticate with `Authorization: Bearer <key>` or `X-API-Key: <key>` (health and metrics are open)."""


class _NoModel:
    """Resolver of an app configured with nothing to serve (never ready; useful for the schema)."""

    def resolve(self) -> tuple[ModelRef | None, ModelRef | None]:
        return None, None


def make_resolver(settings: ServingSettings) -> Resolver:
    if settings.checkpoint_uri:
        return CheckpointResolver(settings.checkpoint_uri, settings.model_name)
    if settings.model:
        uri = settings.resolved_mlflow_uri()
        assert uri is not None  # the settings validator insists
        return RegistryResolver(uri, settings.registered_name, settings.alias, settings.canary.alias)
    logger.warning("neither model nor checkpoint_uri is set: nothing to serve")
    return _NoModel()


def import_factory(path: str) -> Callable[[], Any]:
    """``"package.module:factory"`` → the callable (an extra safety filter's factory or class)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected 'module:callable', got {path!r}")
    target = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{path} is not callable")
    factory: Callable[[], Any] = target
    return factory


def _watermark_key(settings: ServingSettings) -> bytes:
    key = settings.safety.resolved_watermark_key()
    if key is not None:
        return key
    if settings.safety.require_watermark_key:
        raise ValueError("no watermark key configured (safety.watermark_key or safety.watermark_key_file)")
    logger.warning("no watermark key configured: using an ephemeral one (outputs are verifiable by this process only)")
    return secrets.token_bytes(32)


def create_app(
    settings: ServingSettings | None = None,
    *,
    nsfw_detector: Detector | None = None,
    extra_filters: Sequence[SafetyFilter] = (),
    resolver: Resolver | None = None,
    audit_sink: AuditSink | None = None,
) -> FastAPI:
    """The serving app. Keyword arguments replace parts for tests and embedding: an NSFW ``Detector``, extra
    safety filters (run after the built-in ones), the model ``Resolver``, the audit sink."""
    settings = settings or ServingSettings()
    metrics = ServingMetrics()
    key = _watermark_key(settings)
    cfg = settings.safety
    sink = audit_sink
    if sink is None and cfg.audit_uri:
        sink = ObjectStoreAuditSink(
            cfg.audit_uri, include_pixels=cfg.audit_include_pixels,
            on_failure=lambda reason, count: metrics.audit_failures.labels(reason).inc(count),
            on_written=metrics.audit_records.inc,
        )
    factories = [import_factory(path) for path in cfg.extra_filters]

    def more_filters() -> list[SafetyFilter]:
        return [*extra_filters, *(factory() for factory in factories)]

    def count(filter_name: str, outcome: str) -> None:
        metrics.safety_decisions.labels(filter_name, outcome).inc()

    loader = ModelLoader(
        settings, watermark_key=key, on_decision=count, audit_sink=sink, nsfw_detector=nsfw_detector,
        extra_filters=more_filters,
    )
    store = ModelStore(
        resolver or make_resolver(settings),
        loader,
        metrics,
        model_name=settings.registered_name,
        poll_interval_s=settings.poll_interval_s,
        canary_percent=settings.canary.percent if settings.canary.alias else 0.0,
    )
    batching = settings.batching

    def finish(model: LoadedModel, out: np.ndarray, jobs: Sequence[Any]) -> Sequence[Any]:
        return postprocess_many(model, out, jobs, metrics)

    generator: Generator
    if batching.enabled:
        generator = MicroBatcher(
            metrics, max_batch_size=batching.max_batch_size, max_wait_ms=batching.max_wait_ms,
            max_queue=batching.max_queue, finish=finish, workers=batching.workers,
        )
    else:
        generator = DirectGenerator(metrics, max_queue=batching.max_queue, finish=finish,
                                    finish_threads=batching.postprocess_threads)
    keys = ApiKeyStore(
        file=settings.api_keys_file,
        inline=settings.api_keys.get_secret_value() if settings.api_keys is not None else None,
        on_problems=lambda reason, count: metrics.api_key_file_errors.labels(reason).inc(count),
        on_keys=metrics.api_keys.set,
    )
    limits = settings.limits
    if not keys.enabled:
        if settings.require_api_keys:
            raise ValueError("require_api_keys is set but no API keys are configured (api_keys_file or api_keys)")
        logger.warning("no API keys configured: the API is open to anyone who can reach it")
    services = Services(
        settings=settings,
        metrics=metrics,
        store=store,
        generator=generator,
        keys=keys,
        buckets=TokenBuckets(limits.rate_limit_per_second, limits.rate_limit_burst),
        verifier=Watermarker(key, cfg.watermark_payload_bits, use_dwt=cfg.watermark_dwt),
        policy=limits.policy(),
        verify_gate=WorkGate(
            limits.verify_concurrency, limits.verify_queue, limits.verify_timeout_s, what="verify",
            noun="watermark verification", retry_after_s=limits.retry_after_s,
            on_refused=lambda reason: metrics.rejected.labels(reason).inc(),
        ),
    )
    store.on_change = services.update_ready

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads is not None:
            torch.set_num_threads(settings.torch_threads)
        # numpy's OpenBLAS would start its own threads for the safety filters' small matrix products: on a
        # loaded machine they spin and cost ~10x the work itself. The generator has the cores.
        threadpool_limits(limits=1, user_api="blas")
        services.post_executor = ThreadPoolExecutor(limits.verify_concurrency, thread_name_prefix="ganops-verify")
        await generator.start()
        store.start()
        services.started = True
        services.update_ready()
        try:
            yield
        finally:
            services.draining = True
            services.update_ready()
            await generator.close(timeout=settings.shutdown_timeout_s)
            store.stop()
            services.post_executor.shutdown(wait=True)
            close = getattr(sink, "close", None)
            if callable(close):
                close(timeout=settings.shutdown_timeout_s)
            logger.info("serving stopped")

    app = FastAPI(title="ganops serving", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.services = services
    install_error_handlers(app)
    for module in (health, generate, models, watermark, v2):
        app.include_router(module.router)
    guard = EdgeGuard(
        keys=keys,
        addresses=TokenBuckets(limits.address_rate_limit_per_second, limits.address_rate_limit_burst),
        failures=TokenBuckets(limits.auth_failure_rate_per_second, limits.auth_failure_burst),
        open_paths=open_paths(app),
    )
    app.add_middleware(ServingMiddleware, metrics=metrics, max_body_bytes=limits.max_body_bytes, guard=guard)
    if settings.cors_origins:  # outermost: preflights need no key, and refusals carry the CORS headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    _limits_in_schema(app, settings)
    return app


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """Every API route, also inside included routers (FastAPI keeps those as one route per router; none of ours
    has a prefix)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _api_routes(included.routes)


def _needs_key(dependant: Dependant) -> bool:
    return dependant.call is authenticate or any(_needs_key(d) for d in dependant.dependencies)


def open_paths(app: FastAPI) -> frozenset[str]:
    """Paths answered without an API key: routes that do not depend on :func:`authenticate` (probes, metrics,
    ``/v2`` server metadata) and the schema pages. Every other path, unknown ones included, needs a key: a new
    route is closed unless it is written open."""
    paths = {p for p in (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url) if p}
    for route in _api_routes(app.routes):
        if not _needs_key(route.dependant):
            if "{" in route.path:
                raise ValueError(f"open route {route.path} has path parameters: the edge guard matches exact paths")
            paths.add(route.path)
    return frozenset(paths)


def _limits_in_schema(app: FastAPI, settings: ServingSettings) -> None:
    """The OpenAPI schema states this server's limits (n, truncation), not only the static ceilings."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = default_openapi()
        props = schema.get("components", {}).get("schemas", {}).get("GenerateRequest", {}).get("properties", {})
        if "n" in props:
            props["n"]["maximum"] = settings.limits.max_n
        for option in props.get("truncation", {}).get("anyOf", []):
            if option.get("type") == "number":
                option["exclusiveMinimum"] = settings.limits.min_truncation
                option["maximum"] = settings.limits.max_truncation
        app.openapi_schema = schema
        return schema

    setattr(app, "openapi", openapi)  # noqa: B010 - FastAPI's documented way to customise the schema
