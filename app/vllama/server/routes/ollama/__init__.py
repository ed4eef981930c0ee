"""The Ollama API (`/` and `/api/*`): parse, translate (vllama.translate), forward, translate
back. One module per job; server.route_table maps the paths to these handlers.

- `plumbing`: error answers, request bodies, NDJSON lines (shared by the others)
- `chat_generate`: /api/chat and /api/generate
- `embeddings`: /api/embed and /api/embeddings
- `listing`: /, /api/version, /api/tags, /api/ps, /api/show
- `management`: pull, push, create, copy, delete, blobs
"""
