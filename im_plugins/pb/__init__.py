"""Generated protobuf / gRPC code; regenerate with ``python proto/generate.py``."""
