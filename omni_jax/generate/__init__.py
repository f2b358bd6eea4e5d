"""Generation: sampling (sampling.py), KV-cached text and interleaved text/speech decoding
(interleaved.py), codes -> mel -> waveform synthesis (synthesis.py)."""
