"""The warm cluster's front door: `cluster up` starts a long-lived process on this machine (a
detached Ray actor, `actor`) that listens on a UNIX socket only the cluster's owner can use
(`protocol`: the socket, its folder's permissions, the peer's uid, the JSON lines on it) and runs
the requests it is handed through the same pipeline as the direct path (`server`). `generate` and
`batch` hand their inputs to it when it answers (`client`: no Ray, torch or diffusers imported), and
stream its events back; where it does not, they run directly."""
