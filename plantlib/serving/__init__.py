"""Serve a trained model over HTTP: the FastAPI app (`app`), its model adapter (`model`), request checks
(`validation`), the micro-batcher that groups concurrent requests for the engine (`batching`) and a page (`static/`)."""
