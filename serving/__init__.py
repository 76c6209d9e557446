"""The FastAPI service: onnxruntime only, never TensorFlow."""
