"""Modules generated from grpc_predict_v2.proto by `python -m guardproxy.grpc.generate`."""
