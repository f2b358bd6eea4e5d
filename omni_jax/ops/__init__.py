"""Device-side (jit-able) signal operations shared by the audio branches."""
