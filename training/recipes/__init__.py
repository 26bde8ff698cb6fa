"""Training recipes: each is read top to bottom (config, setup or resume, loop, checkpoint)."""
