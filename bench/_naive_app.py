"""The naive baseline of bench/serve_latency.py: the same model and preprocessing behind an
endpoint that runs one ``session.run`` per request (a sync route in FastAPI's thread pool),
without micro-batching, metrics or logging. Model path from ``BENCH_MODEL``."""

from __future__ import annotations

import os

from fastapi import FastAPI, File, UploadFile

from model.inference import OnnxModel
from model.preprocess import preprocess


def create_app() -> FastAPI:
    model = OnnxModel(os.environ["BENCH_MODEL"])
    app = FastAPI()

    @app.post("/predict")
    def predict(file: UploadFile = File(...)) -> dict[str, float]:  # noqa: B008
        pixels = preprocess(file.file.read(), model.image_size, model.input_fit)
        scores, _ = model.predict(pixels[None])
        return {"probability": float(scores[0])}

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app
