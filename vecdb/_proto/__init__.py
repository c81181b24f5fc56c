"""Generated gRPC stubs of the vecdb v1 API (``vecdb._proto.v1``); regenerate with
``python -m vecdb._proto.generate``."""
