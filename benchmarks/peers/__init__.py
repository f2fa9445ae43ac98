"""Side-by-side runners: one module per contender, run with that contender's own venv."""
