"""Class-folder datasets: scanning, the stable hash split every stage agrees on, and sample data."""
