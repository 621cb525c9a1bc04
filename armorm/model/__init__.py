"""ArmoRM itself: config and checkpoint loading, conversations to token positions, the backbone, the packed
runtime's math, the heads."""
