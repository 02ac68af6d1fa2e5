"""Serving: `resnetlab.serve.app.create_app(classifier)` builds the FastAPI app behind `resnetlab serve`.

Kept import-free so `import resnetlab.serve` does not pull in FastAPI; import `resnetlab.serve.app` for the app.
"""
