"""The recall service: HTTP, batching, retrieval and metrics over a bundle."""
import model  # noqa: F401  (first: it names OpenBLAS's kernel before any service module loads faiss)
