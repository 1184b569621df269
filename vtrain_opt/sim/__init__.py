"""The simulator: op times, stage costs, pipeline schedule, memory, and the iteration model."""
