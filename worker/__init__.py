"""pacsai worker package."""
