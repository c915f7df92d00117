"""PyTorch engine."""


def jit(fn):
    # Eager: torch.compile costs seconds per shape and is opt-in in Keras too.
    return fn
