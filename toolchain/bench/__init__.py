"""`shira-bench`: CPU latency and memory, side by side in one run (run.py), switch time against model size
(scaling.py), and the cost of checking a base's integrity at real size (integrity.py)."""
