"""Training of both stages (cross-encoder and bi-encoder) on sentence-transformers trainers; nothing else imports it."""
