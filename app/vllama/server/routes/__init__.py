"""HTTP routes, one module per API: ollama (/ and /api/*), openai (/v1/*), health
(/health, /health/ready), metrics (/metrics). server.app.create_app includes them."""
