"""Tiny STS pairs (sentence1, sentence2, score) that the tuning tests write as dev sets."""

STS_PAIRS = [
    ("The quick brown fox jumps.", "A fox jumps quickly.", 4.5),
    ("Meeting transcripts are long.", "Transcripts of meetings run long.", 4.0),
    ("Key and value states.", "The final token.", 1.0),
    ("Scientific abstracts.", "Essays make a corpus.", 0.5),
    ("Compress the context in one word.", "One word compresses the context.", 4.0),
    ("Retrieval needs embeddings.", "The lazy dog sleeps.", 0.0),
]
