"""HTTP routes by resource: health (liveness, readiness, metrics), generate, models, watermark, and the Open
Inference Protocol v2 face of the same data plane."""

from ganops.serving.routes import generate, health, models, v2, watermark

__all__ = ["generate", "health", "models", "v2", "watermark"]
