"""tanren's built-in ML stages; each module runs as `python -m tanren_stages.<stage>`
and follows docs/stage-protocol.md."""
