"""Batch scoring over gRPC against TensorFlow Serving (see issue 6)."""
