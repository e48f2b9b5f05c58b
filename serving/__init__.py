"""The local TF-Serving-compatible model server and deployment files (see issue 5)."""
