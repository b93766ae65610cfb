"""`multi-image serve`: an OpenAI-compatible image API on Ray Serve over the warm cluster.
`schema` (requests and caps, pure), `keys` (callers and their budgets), `storage` (the data
directory), `wording` (answers in the API's terms), `app` (the Serve deployment), `server`
(starting and stopping it). Its rules for clients and operators: docs/api.md."""
