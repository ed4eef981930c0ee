"""Models over time: on-demand engines, keep_alive, the memory budget, sleep mode."""
