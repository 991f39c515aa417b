"""Serving: the HTTP generation API behind the safety filters, with hot swap, canary and limits.

``create_app(settings)`` (:mod:`ganops.serving.app`) builds the FastAPI app; ``run(settings)``
(:mod:`ganops.serving.server`) serves it with uvicorn; ``python -m ganops.serving`` does that from the environment.
See docs/serving.md.
"""
