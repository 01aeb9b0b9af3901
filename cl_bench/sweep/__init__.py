"""Many runs: sweep plans and the executors that run them (local, SLURM, Ray)."""
