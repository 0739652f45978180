"""pacsai daemon package."""
