"""pgqueue status API and dashboard (aiohttp), installed as ``pgqueue_service``.

The HTTP API of docs/api.md arrives with the status-API work; this package
holds its place in the layout so the import name is settled.
"""
