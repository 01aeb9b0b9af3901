"""The embedded toy world: generated domains and a tiny CLIP (docs/toy-world.md)."""
