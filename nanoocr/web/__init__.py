"""`nanoocr serve`: a FastAPI app (JSON API + one page) over a loaded Reader. See app.py."""
