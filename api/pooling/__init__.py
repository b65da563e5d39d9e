"""Multi-vector (ColBERT-style) requests: vLLM's ``POST /pooling`` with ``task: "token_embed"`` and TEI's
``POST /embed_all``, both one ``TokenEmbedTask``; limits come in through the validation context
(``{"settings": Settings}``), as for embeddings."""
