"""`multi-image serve`: an OpenAI-compatible image API on Ray Serve over the warm cluster.
`schema` (pure), `app` (the Serve deployment), `server` (starting and stopping it)."""
