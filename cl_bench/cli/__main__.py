"""`python -m cl_bench.cli ...` (torchrun, executors): the `clbench` program."""

from cl_bench.cli.app import main

if __name__ == "__main__":
    main()
