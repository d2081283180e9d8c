"""The recall service: HTTP, batching, retrieval and metrics over a bundle."""
